"""A whole network on one machine: its own devnet, a coordinator process and N node processes,
each with its own key (devnet accounts #2..), port and state folder. Used by `make demo`, the
integration tests and the pipeline benchmark."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from web3.types import RPCEndpoint

from shardnet import devnet as dn
from shardnet import services
from shardnet.audit import build_ledger
from shardnet.bindings import Contracts
from shardnet.chain import Chain, dev_account
from shardnet.deployment import Deployment
from shardnet.hosts import Host, Hosts
from shardnet.ledger import AuditRecord, Ledger
from shardnet.model.loading import load_model
from shardnet.model.shards import publish
from shardnet.storage import IpfsClient
from shardnet.tools import free_port, repo_root


class Network:
    def __init__(
        self,
        home: Path,
        nodes: int = 3,
        ipfs_timeout_s: float = 3.0,
        devnet_settings: dn.DevnetSettings | None = None,
        coordinator: bool = True,
        coordinator_args: tuple[str, ...] = (),
        node_overrides: dict[int, dict[str, Any]] | None = None,
        own_ipfs: bool = False,
        hosts: Hosts | None = None,
    ):
        self.home = Path(home)
        self.home.mkdir(parents=True, exist_ok=True)
        # with `hosts`, every process is on a host of its own (a network namespace): the chain and
        # the devnet's IPFS daemon on one, the coordinator on another, each node with its own
        # IPFS daemon on its own, other nodes reaching it through its link's delay relay
        self.hosts = hosts
        self.placed: dict[str, Host] = {}
        if hosts is not None:
            own_ipfs = True
            chain = self.placed["chain"] = hosts.add("chain")
            devnet_settings = dn.DevnetSettings(
                home=self.home / "devnet",
                host=chain.ip,
                chain_port=free_port(),
                ipfs_port=free_port(),
                exec_prefix=chain.prefix,
            )
        self.settings = devnet_settings or dn.DevnetSettings(
            home=self.home / "devnet", chain_port=free_port(), ipfs_port=free_port()
        )
        self.n_nodes = nodes
        self.run_coordinator = coordinator
        self.ipfs_timeout_s = ipfs_timeout_s
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.node_ports: list[int] = []
        self.coordinator_args = list(coordinator_args)
        # node index -> {"slowdown", "compute_score", "misbehave", "stake_wei", "torch_threads",
        # "endpoint", "ipfs_peers"}
        self.node_overrides = node_overrides or {}
        self.own_ipfs = own_ipfs  # each node runs its own IPFS daemon and joins the swarm
        self.ipfs_daemons: dict[int, dict[str, Any]] = {}  # node index -> its daemon's process record
        self.ipfs_apis: dict[int, str] = {}

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> Network:
        dn.up(self.settings)
        self.deployment_path = dn.DevnetPaths.default(self.settings).deployment
        self.deployment = Deployment.load(self.deployment_path)
        if self.hosts is not None:  # everyone reaches the chain over its link's delay too
            relay = self.hosts.expose(self.placed["chain"], self.settings.chain_port)
            self.deployment = dataclasses.replace(self.deployment, rpc_url=f"http://{relay}", ws_url=f"ws://{relay}")
            self.deployment.save(self.deployment_path)
        self.chain = Chain.from_deployment(self.deployment, account=dev_account(0))
        self.c = Contracts(self.chain)
        self.ipfs = IpfsClient(self.deployment.ipfs_api)
        if self.run_coordinator:
            self.start_coordinator()
        for i in range(self.n_nodes):
            self.node_ports.append(free_port())
            self.start_node(i)
        deadline = time.monotonic() + 60
        while sum(self.c.nodes.is_active(dev_account(2 + i).address) for i in range(self.n_nodes)) < self.n_nodes:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes did not register; logs in {self.home}")
            time.sleep(0.2)
        return self

    def start_coordinator(self) -> None:
        self.start_process(
            "coordinator", ["coordinator", "run", "--deployment", str(self.deployment_path), *self.coordinator_args]
        )

    def node_config(self, i: int) -> Path:
        extra = dict(self.node_overrides.get(i, {}))
        host = self.placed.get(f"node{i}")
        if host is not None and self.hosts is not None:
            extra.setdefault("endpoint", "http://" + self.hosts.expose(host, self.node_ports[i]))
        path = self.home / f"node{i}.toml"
        endpoint = f'endpoint = "{extra["endpoint"]}"\n' if "endpoint" in extra else ""  # e.g. behind a proxy
        if host is not None:
            endpoint += f'listen_host = "{host.ip}"\n'
        if i in self.ipfs_apis:
            endpoint += f'ipfs_api = "{self.ipfs_apis[i]}"\nipfs_peers = {json.dumps(extra.get("ipfs_peers", []))}\n'
        path.write_text(
            f'dev_account = {2 + i}\ndeployment = "{self.deployment_path}"\nlisten_port = {self.node_ports[i]}\n'
            f'state_dir = "{self.home / f"node{i}-state"}"\nipfs_timeout_s = {self.ipfs_timeout_s}\n'
            f"slowdown = {extra.get('slowdown', 1.0)}\n"
            f'misbehave = "{extra.get("misbehave", "")}"\n{endpoint}'
            f"stake_wei = {extra.get('stake_wei', 10**18)}\ntorch_threads = {extra.get('torch_threads', 1)}\n"
            f"[hardware]\nmemory_mb = {4096 * (i + 1)}\ncompute_score = {extra.get('compute_score', 10)}\n"
            f"bandwidth_mbps = 1000\n"
        )
        return path

    def add_node(self) -> int:
        """Start one more node process (a node joining a running network); returns its index."""
        i = len(self.node_ports)
        self.node_ports.append(free_port())
        self.start_node(i)
        return i

    def start_node(self, i: int) -> None:
        if self.hosts is not None and f"node{i}" not in self.placed:
            self.placed[f"node{i}"] = self.hosts.add(f"node{i}")
        if self.own_ipfs and i not in self.ipfs_daemons:
            self._start_ipfs(i, free_port())
            self.ipfs_apis[i] = f"http://127.0.0.1:{self.ipfs_daemons[i]['port']}"  # on the node's own host
        self.start_process(f"node{i}", ["node", "run", "--config", str(self.node_config(i))])

    def node_url(self, i: int) -> str:
        """Where this process reaches node `i` directly (its host's address, no delay relay)."""
        host = self.placed.get(f"node{i}")
        return f"http://{host.ip if host else '127.0.0.1'}:{self.node_ports[i]}"

    def wait_ready(self, i: int, timeout_s: float = 120) -> None:
        import httpx

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.node_url(i)}/health", timeout=2).json()["ready"]:
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"node{i} did not become ready; see {self.home / f'node{i}.log'}")

    def start_process(self, name: str, args: list[str]) -> None:
        log = open(self.home / f"{name}.log", "ab")
        if self.hosts is not None and name not in self.placed:
            self.placed[name] = self.hosts.add(name)
        prefix = self.placed[name].prefix if name in self.placed else []
        self.procs[name] = subprocess.Popen(
            [*prefix, sys.executable, "-m", "shardnet.cli", *args],
            cwd=repo_root(),
            stdout=log,
            stderr=log,
            start_new_session=True,
            env={**os.environ, "TOKENIZERS_PARALLELISM": "false", "SHARDNET_DEPLOYMENT": str(self.deployment_path)},
        )

    def start_gateway(self, keys: Path, dev_account_index: int = 13, timeout_s: float = 60) -> str:
        """Start `shardnet gateway` paying from a devnet account; returns its base URL (…/v1)."""
        import httpx

        port = free_port()
        self.start_process(
            "gateway", ["gateway", "--keys", str(keys), "--port", str(port), "--dev-account", str(dev_account_index)]
        )
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                httpx.get(url + "/models", timeout=2)
                return url
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError(f"the gateway did not start; see {self.home / 'gateway.log'}")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> bool:
        """Stop a process; returns whether it exited on `sig` (a SIGKILL follows after 15 s)."""
        proc = self.procs.pop(name)
        os.killpg(proc.pid, sig)
        return _reap(proc, time.monotonic() + 15)

    def kill_ipfs(self, i: int) -> None:
        """kill -9 node `i`'s own IPFS daemon."""
        os.killpg(self.ipfs_daemons[i]["pid"], signal.SIGKILL)

    def restart_ipfs(self, i: int) -> None:
        """Start node `i`'s IPFS daemon again, same repository (what it pinned) and API port."""
        services.stop(self.ipfs_daemons[i])
        self._start_ipfs(i, self.ipfs_daemons[i]["port"])

    def _start_ipfs(self, i: int, api_port: int) -> None:
        """Node `i`'s own IPFS daemon, on its host: API on that host's loopback, swarm on its address."""
        host = self.placed.get(f"node{i}")
        self.ipfs_daemons[i] = services.start_ipfs_daemon(
            self.home / f"node{i}-ipfs",
            api_port,
            f"/ip4/{host.ip if host else '127.0.0.1'}/tcp/0",
            self.home / f"node{i}-ipfs.log",
            prefix=host.prefix if host else (),
        )

    def restart_chain(self) -> None:
        """Stop Anvil and start it again from its saved state (`devnet up` reuses the rest)."""
        dn.stop_service(self.settings, "anvil")
        dn.up(self.settings)

    def stop(self) -> dict[str, bool]:
        """SIGTERM every process at once (each one's shutdown overlaps the others'); returns which
        ones shut down cleanly within 15 s (the rest get a SIGKILL)."""
        procs, self.procs = self.procs, {}
        for proc in procs.values():
            with contextlib.suppress(ProcessLookupError):  # it already exited
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        clean = {name: _reap(proc, deadline) for name, proc in procs.items()}
        for record in self.ipfs_daemons.values():
            services.stop(record)
        dn.down(self.settings)
        return clean

    # ------------------------------------------------------------------ models
    def publish(
        self,
        source: str,
        quant: str = "int8",
        seed: int = 0,
        price_per_block: int = 10**9,
        ipfs: IpfsClient | None = None,
    ) -> tuple[int, str]:
        """Put the model's shards on IPFS (the devnet's daemon, or `ipfs`) and register it."""
        model, tok_dir = load_model(source, seed)
        manifest = publish(model, ipfs or self.ipfs, source, quant, tokenizer_dir=tok_dir)
        assert manifest.cid is not None  # publish() returns the manifest with its CID
        model_id = self.c.models.register_model(
            source, manifest.cid, len(manifest.blocks), manifest.blocks_root, price_per_block, account=dev_account(0)
        )
        return model_id, manifest.cid

    def advance(self, seconds: int) -> None:
        """Move the chain's clock forward and mine a block, so the latest block shows the new time
        (the coordinator's expiry sweep reads it)."""
        provider = self.chain.w3.provider
        provider.make_request(RPCEndpoint("evm_increaseTime"), [seconds])
        provider.make_request(RPCEndpoint("evm_mine"), [])

    def ledger(self) -> Ledger:
        """Every event of the deployment so far, applied to a fresh ledger."""
        return build_ledger(self.chain)

    def settled_ledger(self, quiet_s: float = 3.0, timeout_s: float = 120) -> Ledger:
        """The chain's events once the network is at rest: every audit resolved and no new event
        for `quiet_s` (node agents open, vote on and resolve audits in the background, so contract
        state moves for a while after the last job completes)."""
        deadline = time.monotonic() + timeout_s
        last, since = (-1, -1), time.monotonic()
        while True:
            ledger = self.ledger()
            if ledger.last_key != last:
                last, since = ledger.last_key, time.monotonic()
            elif all(a.resolved for a in ledger.audits.values()) and time.monotonic() - since >= quiet_s:
                return ledger
            if time.monotonic() > deadline:
                raise RuntimeError(f"the network did not come to rest in {timeout_s:.0f} s; logs in {self.home}")
            time.sleep(0.5)

    def resolved_audits(
        self, job_ids: list[int], every_stage: bool = False, timeout_s: float = 120
    ) -> tuple[Ledger, dict[int, list[AuditRecord]]]:
        """The ledger and each job's audits (by stage) once each job has audits, all resolved
        (with `every_stage`, one per stage of its route)."""
        deadline = time.monotonic() + timeout_s
        while True:
            ledger = self.ledger()
            by_job: dict[int, list[AuditRecord]] = {j: [] for j in job_ids}
            for audit in sorted(ledger.audits.values(), key=lambda a: a.stage):
                if audit.job_id in by_job:
                    by_job[audit.job_id].append(audit)
            if all(
                audits
                and all(a.resolved for a in audits)
                and (not every_stage or len(audits) == len(ledger.jobs[j].route))
                for j, audits in by_job.items()
            ):
                return ledger, by_job
            if time.monotonic() > deadline:
                raise RuntimeError(f"audits of jobs {job_ids} did not all resolve; logs in {self.home}")
            time.sleep(0.5)

    def rivals(self, model_id: int, node: str) -> tuple[str, ...]:
        """The other nodes whose span of the model overlaps `node`'s: a job that avoids them is
        routed through `node` (how tests and the demo send work to a chosen node)."""
        assigned = {n: self.c.models.assignment(model_id, n) for n in self.c.models.assigned_nodes(model_id)}
        mine = assigned[node]
        return tuple(n for n, a in assigned.items() if n != node and a.start < mine.end and mine.start < a.end)

    def wait_confirmed(self, model_id: int, spans: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            nodes = self.c.models.assigned_nodes(model_id)
            confirmed = [n for n in nodes if self.c.models.assignment(model_id, n).confirmed]
            if len(confirmed) >= spans:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"model {model_id}: {len(confirmed)} of {spans} spans confirmed; logs in {self.home}"
                )
            time.sleep(0.2)


def _reap(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Wait for a signalled process until `deadline`; whether it exited by then (if not, its
    process group gets a SIGKILL)."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        return True
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        return False
