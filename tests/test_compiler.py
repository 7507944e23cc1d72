"""Contract compilation: standard JSON through py-solc-x and the npm solc, cached by source hash."""

import json
import shutil

import solcx

from shardnet import compiler


def test_artifacts_carry_abi_bytecode_hash_and_version():
    artifacts = compiler.compile_contracts()
    assert set(artifacts) == set(compiler.CONTRACTS)
    market = artifacts["JobMarket"]
    assert market.bytecode.startswith("0x") and len(market.bytecode) > 1000
    assert any(e.get("name") == "postJob" for e in market.abi)
    assert market.compiler.startswith("0.8.")
    assert len(market.source_hash) == 64


def test_cache_is_used_while_sources_are_unchanged(monkeypatch):
    compiler.compile_contracts()

    def must_not_compile(*args, **kwargs):
        raise AssertionError("recompiled although no source changed")

    monkeypatch.setattr(solcx, "compile_standard", must_not_compile)
    assert compiler.compile_contracts()["NodeRegistry"].abi


def test_a_changed_source_changes_the_hash(tmp_path):
    copy = tmp_path / "contracts"
    shutil.copytree(compiler.tools.CONTRACTS_DIR, copy)
    before = compiler._sources_hash(compiler.gather_sources(copy))
    path = copy / "JobMarket.sol"
    path.write_text(path.read_text() + "\n// changed\n")
    assert compiler._sources_hash(compiler.gather_sources(copy)) != before


def test_imports_are_gathered_from_node_modules():
    sources = compiler.gather_sources()
    assert "@openzeppelin/contracts/utils/cryptography/ECDSA.sol" in sources
    assert "interfaces/IJobMarket.sol" in sources
    meta = json.loads((compiler.build_dir() / "_meta.json").read_text())
    assert meta["source_hash"] == compiler._sources_hash(sources)
