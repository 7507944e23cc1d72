"""The deployment file: the one place every process learns where the network lives."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from shardnet.errors import DeploymentNotFound
from shardnet.protocol import CONTRACTS
from shardnet.tools import default_home


def default_path() -> Path:
    """$SHARDNET_DEPLOYMENT, else the devnet's `deployment.json` (in $SHARDNET_HOME or <repo>/.devnet)."""
    env = os.environ.get("SHARDNET_DEPLOYMENT")
    return Path(env) if env else default_home() / "deployment.json"


@dataclass(frozen=True)
class ContractRecord:
    address: str
    artifact_hash: str


@dataclass(frozen=True)
class Deployment:
    chain_id: int
    rpc_url: str
    ws_url: str
    ipfs_api: str
    deploy_block: int  # first block any agent needs to read events from
    compiler: str
    contracts: dict[str, ContractRecord] = field(default_factory=dict)
    # swarm multiaddrs (…/p2p/<peer id>) of the daemon behind ipfs_api: where a node running its
    # own IPFS daemon connects to fetch what was published there
    ipfs_peers: list[str] = field(default_factory=list)

    def addresses(self) -> list[str]:
        """Every project contract's address, in `CONTRACTS` order (what agents read events from)."""
        return [self.address(name) for name in CONTRACTS]

    def address(self, name: str) -> str:
        try:
            return self.contracts[name].address
        except KeyError:
            raise DeploymentNotFound(f"the deployment file has no {name}; redeploy with 'shardnet devnet up'") from None

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path | None = None) -> Deployment:
        path = Path(path) if path else default_path()
        if not path.exists():
            raise DeploymentNotFound(
                f"no deployment file at {path}; run 'shardnet devnet up' or pass --deployment / SHARDNET_DEPLOYMENT"
            )
        try:
            data = json.loads(path.read_text())
            data["contracts"] = {k: ContractRecord(**v) for k, v in data["contracts"].items()}
            return cls(**data)
        except (ValueError, KeyError, TypeError) as exc:
            raise DeploymentNotFound(
                f"deployment file {path} is unreadable ({exc}); run 'shardnet devnet up' again"
            ) from None
