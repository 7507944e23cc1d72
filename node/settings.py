"""The node agent's one settings object, loaded from a TOML file (`shardnet node run --config`)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from eth_account import Account
from eth_account.signers.local import LocalAccount
from pydantic import BaseModel, Field, ValidationError, model_validator

from node.misbehave import Misbehaviour
from shardnet.errors import ConfigError


class HardwareSettings(BaseModel):
    memory_mb: int = Field(4096, gt=0)  # MiB this node gives to blocks
    compute_score: int = Field(10, gt=0)  # relative throughput
    bandwidth_mbps: int = Field(1000, gt=0)  # Mbit/s


class NodeSettings(BaseModel):
    key: str | None = None  # 0x-prefixed private key of the operator account
    dev_account: int | None = None  # or: index on the devnet mnemonic (devnet only)
    deployment: Path = Path(".devnet/deployment.json")  # written by 'shardnet devnet up'
    listen_host: str = "127.0.0.1"
    listen_port: int = Field(7001, gt=0, lt=65536)
    endpoint: str | None = None  # URL other nodes use to reach this one (default http://listen_host:port)
    stake_wei: int = Field(10**18, gt=0)  # staked at registration if the node is not registered yet
    hardware: HardwareSettings = HardwareSettings()
    state_dir: Path = Path(".devnet/node")  # saved block height, handled jobs
    torch_threads: int = Field(1, gt=0)  # CPU threads for this node's math
    huge_pages: bool = True  # spans' weights on 2 MiB pages (shardnet.model.pages); false: where loaded
    peer_timeout_s: float = Field(30.0, gt=0)  # one data-plane request
    peer_retries: int = Field(3, ge=0)  # bounded retries with backoff
    # this node's own IPFS daemon (Kubo RPC API); default: the deployment file's. With its own
    # daemon the node joins the swarm (peers from the deployment file, the chain and ipfs_peers)
    ipfs_api: str | None = None
    ipfs_peers: list[str] = []  # more swarm multiaddrs (/ip4/…/tcp/…/p2p/<peer id>) to connect to
    ipfs_timeout_s: float = Field(20.0, gt=0)  # reading a job input or a shard
    poll_interval_s: float = Field(0.2, gt=0)  # HTTP polling fallback when the websocket fails
    reroute_wait_s: float = Field(20.0, gt=0)  # how long a stage waits for a dead next stage's replacement
    # emulate a slower machine on a devnet: every span forward takes this many times as long
    # (1 = as fast as this machine goes). For testing heterogeneous swarms on one host.
    slowdown: float = Field(1.0, ge=1.0)
    # tests and benches of verification only (refused on any chain but the devnet's): serve
    # garbage | lazy | perturb | wrong_token instead of the honest result, or on committees
    # lie_vote (vote against its own check) | absent (commit, never reveal)
    misbehave: Misbehaviour = ""

    @model_validator(mode="after")
    def _one_key(self) -> NodeSettings:
        if (self.key is None) == (self.dev_account is None):
            raise ValueError("set exactly one of 'key' (0x private key) or 'dev_account' (devnet index)")
        return self

    @model_validator(mode="after")
    def _peer_addresses(self) -> NodeSettings:
        for addr in self.ipfs_peers:
            if not addr.startswith("/") or "/p2p/" not in addr:
                raise ValueError(f"ipfs_peers: {addr!r} is not a swarm multiaddr; write /ip4/HOST/tcp/PORT/p2p/PEER_ID")
        return self

    @property
    def url(self) -> str:
        return self.endpoint or f"http://{self.listen_host}:{self.listen_port}"

    def account(self) -> LocalAccount:
        if self.key is not None:
            try:
                account: LocalAccount = Account.from_key(self.key)
                return account
            except ValueError:
                raise ConfigError("key: not a valid private key; use 0x followed by 64 hex digits") from None
        from shardnet.chain import dev_account

        return dev_account(self.dev_account)

    @classmethod
    def load(cls, path: Path) -> NodeSettings:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"no node config at {path}; write one (see README, 'Node operators')")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}") from None
        try:
            return cls(**data)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "config"
            raise ConfigError(f"{path}: {field}: {first['msg']}") from None
