"""Compile the Solidity contracts through solc's standard-JSON interface (py-solc-x).

Sources are gathered by following `import` statements (project files first, then
node_modules for `@openzeppelin/...`), so the input carries every byte that is compiled and
its hash decides whether the cached artifacts are still good.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import solcx
from solcx.exceptions import SolcError

from shardnet import tools
from shardnet.errors import CompileError
from shardnet.protocol import CONTRACTS

SETTINGS = {
    "optimizer": {"enabled": True, "runs": 200},
    "evmVersion": "cancun",
    "viaIR": False,
    "outputSelection": {"*": {"*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"]}},
}
MAX_RUNTIME_BYTES = 24_576  # EIP-170: the most runtime code a chain accepts for one contract
_IMPORT = re.compile(r'^\s*import\s+(?:[^"\']*from\s+)?["\']([^"\']+)["\']\s*;', re.MULTILINE)


@dataclass(frozen=True)
class Artifact:
    name: str
    abi: list[dict[str, Any]]
    bytecode: str  # 0x-prefixed creation code
    source_hash: str  # sha256 over every source that went into the compile
    compiler: str  # solc version string

    @property
    def artifact_hash(self) -> str:
        """Identifies exactly this contract build (used in the deployment file)."""
        return hashlib.sha256((self.source_hash + self.name + self.bytecode).encode()).hexdigest()


def build_dir() -> Path:
    return tools.repo_root() / "build" / "contracts"


def _unit_name(import_path: str, importer: str) -> str:
    """Source unit name of an import seen in `importer` (relative imports are resolved)."""
    if import_path.startswith("."):
        return posixpath.normpath(posixpath.join(posixpath.dirname(importer), import_path))
    return import_path


def _file_for(unit: str, contracts_dir: Path) -> Path:
    return tools.node_modules() / unit if unit.startswith("@") else contracts_dir / unit


def gather_sources(contracts_dir: Path | None = None) -> dict[str, str]:
    """Every source unit reachable from the top-level contracts, keyed by unit name."""
    contracts_dir = contracts_dir or tools.CONTRACTS_DIR
    sources: dict[str, str] = {}
    pending = [p.name for p in sorted(contracts_dir.glob("*.sol"))]
    while pending:
        unit = pending.pop()
        if unit in sources:
            continue
        path = _file_for(unit, contracts_dir)
        if not path.exists():
            raise CompileError(f"import '{unit}' not found at {path}; run 'make bootstrap' to install npm packages")
        sources[unit] = path.read_text()
        pending.extend(_unit_name(imported, unit) for imported in _IMPORT.findall(sources[unit]))
    return sources


def _sources_hash(sources: dict[str, str]) -> str:
    digest = hashlib.sha256(json.dumps(SETTINGS, sort_keys=True).encode())
    for unit in sorted(sources):
        digest.update(unit.encode() + b"\0" + sources[unit].encode() + b"\0")
    return digest.hexdigest()


def _compiler_version(solc: str) -> str:
    out = subprocess.run([solc, "--version"], capture_output=True, text=True, timeout=60).stdout
    match = re.search(r"Version:\s*(\S+)", out)
    if not match:
        raise CompileError(f"cannot read the version of {solc}: {out!r}")
    return match.group(1)


def compile_contracts(force: bool = False) -> dict[str, Artifact]:
    """Compile (or load from cache) the project contracts. Returns artifacts by name."""
    sources = gather_sources()
    source_hash = _sources_hash(sources)
    out_dir = build_dir()
    meta_path = out_dir / "_meta.json"
    if not force and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("source_hash") == source_hash:
            return {name: load_artifact(name) for name in meta["contracts"]}

    solc = tools.solc_binary()
    version = _compiler_version(solc)
    standard_input = {
        "language": "Solidity",
        "sources": {unit: {"content": text} for unit, text in sources.items()},
        "settings": SETTINGS,
    }
    try:
        output = solcx.compile_standard(standard_input, solc_binary=solc)
    except SolcError as exc:
        raise CompileError(f"Solidity compile failed:\n{exc.message}") from None

    out_dir.mkdir(parents=True, exist_ok=True)
    artifacts: dict[str, Artifact] = {}
    for unit, contracts in output["contracts"].items():
        for name, data in contracts.items():
            if unit != f"{name}.sol" or name not in CONTRACTS:
                continue
            runtime = len(data["evm"]["deployedBytecode"]["object"]) // 2
            if runtime > MAX_RUNTIME_BYTES:
                raise CompileError(
                    f"{name} compiles to {runtime} bytes of runtime code; chains refuse more than "
                    f"{MAX_RUNTIME_BYTES} (EIP-170): move code out of it"
                )
            artifact = Artifact(name, data["abi"], "0x" + data["evm"]["bytecode"]["object"], source_hash, version)
            (out_dir / f"{name}.json").write_text(json.dumps(artifact.__dict__, indent=1))
            artifacts[name] = artifact
    missing = set(CONTRACTS) - set(artifacts)
    if missing:
        raise CompileError(f"compiler output lacks {sorted(missing)}")
    meta_path.write_text(json.dumps({"source_hash": source_hash, "compiler": version, "contracts": list(CONTRACTS)}))
    return artifacts


def load_artifact(name: str) -> Artifact:
    path = build_dir() / f"{name}.json"
    if not path.exists():
        raise CompileError(
            f"no artifact for {name} at {path}; run 'shardnet devnet up' or 'shardnet contracts compile'"
        )
    return Artifact(**json.loads(path.read_text()))


def all_abis() -> list[dict[str, Any]]:
    """Every ABI entry of the project contracts (for decoding errors and events)."""
    return [entry for name in CONTRACTS for entry in load_artifact(name).abi]
