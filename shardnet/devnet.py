"""The embedded devnet: Anvil + a loopback IPFS daemon + the deployed contracts.

`up` starts what is not running yet (recording PIDs), deploys the contracts unless the
deployment file already matches what is on the chain, and writes the deployment file that
every other process reads. `down` stops only the processes `up` recorded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from shardnet import compiler, services, tools
from shardnet.chain import Chain, dev_account
from shardnet.deployment import ContractRecord, Deployment
from shardnet.errors import PortInUse, ShardnetError
from shardnet.storage import IpfsClient

ETHER = 10**18


class DevnetSettings(BaseSettings):
    """Devnet knobs; each may be set as SHARDNET_<NAME> in the environment."""

    model_config = SettingsConfigDict(env_prefix="SHARDNET_")

    home: Path | None = None  # where state, logs, PIDs and the deployment file live (default <repo>/.devnet)
    host: str = "127.0.0.1"  # loopback only
    chain_port: int = 8545  # Anvil HTTP + websocket
    ipfs_port: int = 5001  # Kubo RPC API
    ipfs_swarm_port: int = 0  # bitswap over TCP (0: any free port; the deployment file names it)
    chain_id: int = 31337
    accounts: int = 20  # funded dev accounts (mnemonic 'test test ... junk')
    min_stake_wei: int = ETHER  # NodeRegistry minimum stake
    min_coordinator_bond_wei: int = ETHER  # NodeRegistry: what a coordinator must bond to route
    unstake_cooldown_s: int = 600  # NodeRegistry unstake cooldown, seconds
    coordinator_fee_bps: int = 500  # JobMarket coordinator cut, basis points of stage fees
    max_job_duration_s: int = 86_400  # JobMarket: how far a deadline may lie ahead, seconds
    # checking (short on the devnet): fees are withdrawable 1-2 epochs after the result
    epoch_length_s: int = 60  # JobMarket settlement epoch; must hold the three windows below
    challenge_window_s: int = 20  # after a result: audits are drawn and challenges opened
    commit_period_s: int = 15  # a committee commits its votes
    reveal_period_s: int = 15  # then reveals them
    min_audit_bps: int = 1_000  # the network's audit rate: each stage re-executed with 10% chance
    committee_size: int = 3  # members per audited stage (fewer if the network is smaller)
    verify_fee_bps: int = 2_000  # each member earns 20% of the audited stage's fee
    min_slash_wei: int = ETHER // 10  # a node found wrong loses at least this...
    slash_multiple: int = 100  # ...or 100x the stage's fee
    member_penalty_wei: int = ETHER // 100  # a member outvoted by the majority loses this
    challenge_bond_wei: int = ETHER // 1000  # the least bond a challenger puts up
    start_timeout_s: float = Field(30.0)  # how long to wait for each service to answer
    # run the chain and the IPFS daemon inside something, e.g. ["ip", "netns", "exec", NAME]
    # (the multi-host harness, shardnet.hosts; `host` is then that namespace's address)
    exec_prefix: list[str] = []


@dataclass(frozen=True)
class DevnetPaths:
    home: Path

    @classmethod
    def default(cls, settings: DevnetSettings | None = None) -> DevnetPaths:
        settings = settings or DevnetSettings()
        return cls(Path(settings.home) if settings.home else tools.default_home())

    @property
    def deployment(self) -> Path:
        return self.home / "deployment.json"

    @property
    def pids(self) -> Path:
        return self.home / "pids.json"

    @property
    def anvil_state(self) -> Path:
        return self.home / "anvil-state.json"

    @property
    def ipfs_repo(self) -> Path:
        return self.home / "ipfs"

    @property
    def logs(self) -> Path:
        return self.home / "logs"


# ---------------------------------------------------------------------- processes
def _read_pids(paths: DevnetPaths) -> dict[str, Any]:
    return json.loads(paths.pids.read_text()) if paths.pids.exists() else {}


def _write_pids(paths: DevnetPaths, pids: dict[str, Any]) -> None:
    paths.home.mkdir(parents=True, exist_ok=True)
    paths.pids.write_text(json.dumps(pids, indent=2))


def _check_port(host: str, port: int, what: str, flag: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise PortInUse(
                f"port {port} on {host} ({what}) is already in use by another program; stop it or pick "
                f"another port with {flag}"
            ) from None


def _start_anvil(settings: DevnetSettings, paths: DevnetPaths) -> dict[str, Any]:
    cmd = [
        *settings.exec_prefix,
        tools.anvil_binary(),
        "--host",
        settings.host,
        "--port",
        str(settings.chain_port),
        "--chain-id",
        str(settings.chain_id),
        "--accounts",
        str(settings.accounts),
        "--state",
        str(paths.anvil_state),
        "--state-interval",
        "1",
    ]
    return services.spawn(cmd, paths.logs / "anvil.log", str(paths.anvil_state), settings.chain_port)


def _start_ipfs(settings: DevnetSettings, paths: DevnetPaths) -> dict[str, Any]:
    swarm = f"/ip4/{settings.host}/tcp/{settings.ipfs_swarm_port}"
    script, repo = str(tools.ipfs_daemon_script()), str(paths.ipfs_repo)
    cmd = [*settings.exec_prefix, tools.node_binary(), script, repo, str(settings.ipfs_port), swarm, settings.host]
    return services.spawn(cmd, paths.logs / "ipfs.log", repo, settings.ipfs_port)


def stop_service(settings: DevnetSettings, name: str, sig: int = signal.SIGTERM) -> bool:
    """Stop one of the devnet's services ("anvil" or "ipfs") with `sig`; `up` starts it again
    (Anvil from its saved state). Returns whether it was running."""
    record = _read_pids(DevnetPaths.default(settings)).get(name)
    if record is None or not services.ours(record):
        return False
    os.killpg(record["pid"], sig)
    while services.alive(record["pid"]):
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------------- contracts
def _deployment_current(path: Path, chain: Chain, artifacts: dict[str, compiler.Artifact]) -> Deployment | None:
    try:
        deployment = Deployment.load(path)
    except ShardnetError:
        return None
    if deployment.chain_id != chain.chain_id:
        return None
    for name, artifact in artifacts.items():
        record = deployment.contracts.get(name)
        if record is None or record.artifact_hash != artifact.artifact_hash or not chain.has_code(record.address):
            return None
    return deployment


def deploy_contracts(
    chain: Chain,
    settings: DevnetSettings,
    ipfs_api: str,
    ws_url: str,
    admin: LocalAccount | None = None,
    coordinators: Sequence[str] | None = None,
) -> Deployment:
    """Deploy and wire the contracts, `admin` (default: dev account 0) holding every admin role
    and each of `coordinators` the coordinator role. By default the coordinator is dev account 1,
    bonded here with the minimum; coordinators named explicitly bond themselves
    (`shardnet coordinator bond`)."""
    artifacts = compiler.compile_contracts()
    admin = admin or dev_account(0)
    bonded = [dev_account(1)] if coordinators is None else []
    coordinators = [dev_account(1).address] if coordinators is None else list(coordinators)
    chain.account = admin
    first_block = chain.w3.eth.block_number + 1
    nodes_addr, _ = chain.deploy(
        artifacts["NodeRegistry"], admin.address, settings.min_stake_wei, settings.unstake_cooldown_s, admin.address
    )
    models_addr, _ = chain.deploy(artifacts["ModelRegistry"], admin.address, nodes_addr)
    market_addr, _ = chain.deploy(
        artifacts["JobMarket"],
        admin.address,
        nodes_addr,
        models_addr,
        settings.epoch_length_s,
        market_terms(settings),
    )
    verifier_addr, _ = chain.deploy(
        artifacts["Verifier"],
        admin.address,
        market_addr,
        nodes_addr,
        (settings.min_slash_wei, settings.slash_multiple, settings.member_penalty_wei, settings.challenge_bond_wei),
    )
    nodes = chain.contract("NodeRegistry", nodes_addr)
    models = chain.contract("ModelRegistry", models_addr)
    market = chain.contract("JobMarket", market_addr)
    chain.transact(nodes.functions.setMarket(market_addr))
    chain.transact(nodes.functions.grantRole(chain.call(nodes.functions.SLASHER_ROLE()), verifier_addr))
    chain.transact(market.functions.setVerifier(verifier_addr))
    chain.transact(nodes.functions.setMinCoordinatorBond(settings.min_coordinator_bond_wei))
    role = chain.call(models.functions.COORDINATOR_ROLE())
    for coordinator in coordinators:
        chain.transact(models.functions.grantRole(role, coordinator))
        chain.transact(market.functions.grantRole(role, coordinator))
    for account in bonded:
        if settings.min_coordinator_bond_wei:
            chain.transact(nodes.functions.bondCoordinator(), value=settings.min_coordinator_bond_wei, account=account)
    version = next(iter(artifacts.values())).compiler
    return Deployment(
        chain_id=chain.chain_id,
        rpc_url=chain.rpc_url,
        ws_url=ws_url,
        ipfs_api=ipfs_api,
        deploy_block=first_block,
        compiler=version,
        contracts={
            "NodeRegistry": ContractRecord(nodes_addr, artifacts["NodeRegistry"].artifact_hash),
            "ModelRegistry": ContractRecord(models_addr, artifacts["ModelRegistry"].artifact_hash),
            "JobMarket": ContractRecord(market_addr, artifacts["JobMarket"].artifact_hash),
            "Verifier": ContractRecord(verifier_addr, artifacts["Verifier"].artifact_hash),
        },
    )


def market_terms(settings: DevnetSettings) -> tuple[int, ...]:
    """The JobMarket's `Terms` tuple from the settings, in the struct's order."""
    return (
        settings.coordinator_fee_bps,
        settings.max_job_duration_s,
        settings.min_audit_bps,
        settings.challenge_window_s,
        settings.commit_period_s,
        settings.reveal_period_s,
        settings.committee_size,
        settings.verify_fee_bps,
    )


def ensure_deployed(
    rpc_url: str,
    ws_url: str,
    ipfs_api: str,
    deployment_path: Path,
    settings: DevnetSettings | None = None,
    admin: LocalAccount | None = None,
    coordinators: Sequence[str] | None = None,
) -> tuple[Deployment, bool]:
    """Reuse the deployment file when it matches the chain and the sources (attach), else deploy
    and write it. Works on any EVM JSON-RPC chain. Returns (deployment, deployed_now)."""
    settings = settings or DevnetSettings()
    chain = Chain(rpc_url)
    artifacts = compiler.compile_contracts()
    current = _deployment_current(deployment_path, chain, artifacts)
    if current is not None:
        return current, False
    deployment = deploy_contracts(chain, settings, ipfs_api, ws_url, admin, coordinators)
    deployment.save(deployment_path)
    return deployment, True


# ---------------------------------------------------------------------- commands
def up(settings: DevnetSettings | None = None) -> dict[str, Any]:
    """Start (or reuse) the devnet and return its status."""
    settings = settings or DevnetSettings()
    paths = DevnetPaths.default(settings)
    paths.home.mkdir(parents=True, exist_ok=True)
    pids = _read_pids(paths)
    rpc_url = f"http://{settings.host}:{settings.chain_port}"
    ipfs_api = f"http://{settings.host}:{settings.ipfs_port}"

    started = {}
    for name, port, flag, start in (
        ("anvil", settings.chain_port, "--chain-port", _start_anvil),
        ("ipfs", settings.ipfs_port, "--ipfs-port", _start_ipfs),
    ):
        record = pids.get(name)
        if record and services.ours(record) and record["port"] == port:
            continue
        if not settings.exec_prefix:  # elsewhere (another namespace) the port cannot be tried from here
            _check_port(settings.host, port, "chain" if name == "anvil" else "IPFS API", flag)
        started[name] = pids[name] = start(settings, paths)
    _write_pids(paths, pids)

    try:
        if "anvil" in started:
            services.wait_ready(
                lambda: Chain(rpc_url, timeout=1).chain_id == settings.chain_id,
                started["anvil"],
                "anvil",
                settings.start_timeout_s,
            )
        if "ipfs" in started:
            services.wait_ready(
                lambda: bool(IpfsClient(ipfs_api, timeout=1).peer_id()),
                started["ipfs"],
                "the IPFS daemon",
                settings.start_timeout_s,
            )
        deploy_started = time.time()
        deployment, deployed = ensure_deployed(
            rpc_url, rpc_url.replace("http://", "ws://"), ipfs_api, paths.deployment, settings
        )
        _name_ipfs_peers(deployment, paths.deployment, ipfs_api)
    except ShardnetError:
        for record in started.values():
            services.stop(record)
        raise
    if deployed:  # Anvil writes its state every second: wait until the deployment is on disk
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if paths.anvil_state.exists() and paths.anvil_state.stat().st_mtime > deploy_started + 0.05:
                break
            time.sleep(0.1)
    info = status(settings)
    info["started"] = sorted(started)
    info["deployed"] = deployed
    return info


def _name_ipfs_peers(deployment: Deployment, path: Path, ipfs_api: str) -> None:
    """Write the daemon's swarm addresses into the deployment file (they change when it restarts
    on a free port): a node with its own IPFS daemon connects there to fetch what was published."""
    with IpfsClient(ipfs_api, timeout=5) as ipfs:
        peers = ipfs.swarm_addrs()
    if peers != list(deployment.ipfs_peers):
        dataclasses.replace(deployment, ipfs_peers=peers).save(path)


def status(settings: DevnetSettings | None = None) -> dict[str, Any]:
    settings = settings or DevnetSettings()
    paths = DevnetPaths.default(settings)
    deployment = Deployment.load(paths.deployment)
    chain = Chain(deployment.rpc_url, timeout=3)
    with IpfsClient(deployment.ipfs_api, timeout=3) as ipfs:
        peer_id = ipfs.peer_id()
    pids = _read_pids(paths)
    return {
        "chain_id": chain.chain_id,
        "block_number": chain.w3.eth.block_number,
        "rpc_url": deployment.rpc_url,
        "ws_url": deployment.ws_url,
        "ipfs_api": deployment.ipfs_api,
        "ipfs_peer_id": peer_id,
        "ipfs_peers": deployment.ipfs_peers,
        "contracts": {name: record.address for name, record in deployment.contracts.items()},
        "deploy_block": deployment.deploy_block,
        "deployment_file": str(paths.deployment),
        "processes": {name: rec["pid"] for name, rec in pids.items() if services.ours(rec)},
    }


def down(settings: DevnetSettings | None = None) -> list[str]:
    """Stop what `up` started (by recorded PID); returns the names stopped."""
    paths = DevnetPaths.default(settings)
    pids = _read_pids(paths)
    stopped = [name for name, record in pids.items() if services.stop(record)]
    if paths.pids.exists():
        paths.pids.unlink()
    return stopped


@contextlib.contextmanager
def temporary(prefix: str = "shardnet-devnet-") -> Iterator[tuple[Deployment, DevnetSettings]]:
    """A throwaway devnet on free ports in a temporary folder, stopped and removed on exit
    (benchmarks and scripts that must not touch a developer's own devnet)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as home:
        settings = DevnetSettings(home=Path(home), chain_port=tools.free_port(), ipfs_port=tools.free_port())
        up(settings)
        try:
            yield Deployment.load(DevnetPaths.default(settings).deployment), settings
        finally:
            down(settings)
