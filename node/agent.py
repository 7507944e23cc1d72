"""The node agent: listener -> filter -> pipeline (executor) -> settlement (reporter), and the
committee (checking others' stages), wired in one place.

Long-lived tasks: the event listener (from the saved position), the data-plane server, and
one worker per running job. Model math runs in threads (or inline for short decode steps) so
the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import torch

from node.committee import Committee
from node.executor import Executor
from node.filter import (
    AdoptRoute,
    ClaimAborted,
    ContestReroute,
    DropJob,
    LoadSpan,
    OpenAudits,
    PrefetchInput,
    ServeOnCommittee,
    StartJob,
    UnloadSpan,
    actions_for,
)
from node.link import LinkClient, LinkServer
from node.link_crypto import LinkKey
from node.metrics import NodeMetrics
from node.misbehave import DEVNET_CHAIN_ID
from node.peers import PeerClient
from node.pipeline import StagePipeline
from node.privacy import JobKeys
from node.reporter import Reporter
from node.server import NodeServer, uvicorn_config
from node.settings import NodeSettings
from node.settlement import Settlement
from node.spans import SpanManager
from node.state import AgentState
from node.swarm import Swarm
from shardnet.bindings import Contracts
from shardnet.chain import Chain
from shardnet.deployment import Deployment
from shardnet.errors import ConfigError
from shardnet.events import Event, EventReader, Listener
from shardnet.ledger import Ledger
from shardnet.protocol import Hardware
from shardnet.storage import IpfsClient

log = logging.getLogger("shardnet.node")
STORE_DRAIN_S = 10.0  # at shutdown, how long the IPFS writes under way (outputs, transcripts) may finish


class NodeAgent:
    def __init__(self, settings: NodeSettings):
        self.settings = settings
        account = settings.account()
        self.address = account.address
        deployment = Deployment.load(settings.deployment)
        self.deploy_block = deployment.deploy_block
        chain = Chain.from_deployment(deployment, account=account)
        if settings.misbehave and chain.chain_id != DEVNET_CHAIN_ID:
            raise ConfigError(
                f"misbehave={settings.misbehave!r} is for tests on the devnet (chain {DEVNET_CHAIN_ID}), and this is "
                f"chain {chain.chain_id}; remove it from the node config"
            )
        contracts = Contracts(chain)
        ipfs = IpfsClient(settings.ipfs_api or deployment.ipfs_api, timeout=settings.ipfs_timeout_s)
        self.ledger = Ledger()
        self.swarm = Swarm(ipfs, self.address, self.ledger, deployment.ipfs_peers + settings.ipfs_peers)
        self.metrics = NodeMetrics()
        self.state = AgentState(settings.state_dir, deployment)
        self.tasks: set[asyncio.Task[None]] = set()
        self.executor = Executor(ipfs, settings.ipfs_timeout_s, settings.slowdown, settings.huge_pages)
        self.reporter = Reporter(contracts, account)
        self.peers = PeerClient(account, settings.peer_timeout_s, settings.peer_retries)  # receipts
        self.link_key = LinkKey.load_or_create(settings.state_dir)
        market = deployment.address("JobMarket")
        self.links = LinkClient(
            self.address, self.link_key, chain.chain_id, market, settings.peer_timeout_s, settings.peer_retries
        )
        self.job_keys = JobKeys(account, self.link_key, chain.chain_id, market, self.ledger, self.state, self.peers)
        self.spans = SpanManager(self.address, self.ledger, self.executor, self.reporter, self.spawn, self.swarm.join)
        self.settlement = Settlement(
            account,
            contracts.market.receipts,
            self.ledger,
            self.executor,
            ipfs,
            self.peers,
            self.reporter,
            self.state,
            self.metrics,
            self.job_keys,
            settings.misbehave,
        )
        self.pipeline = StagePipeline(
            self.address,
            settings,
            self.ledger,
            self.executor,
            ipfs,
            self.links,
            self.settlement,
            self.job_keys,
            self.metrics,
            self.spawn,
        )
        self.committee = Committee(
            account, chain, contracts, self.ledger, self.executor, settings.misbehave, self.state, self.job_keys
        )
        self.links_in = LinkServer(
            self.address,
            self.link_key,
            chain.chain_id,
            market,
            self.ledger.data_keys.get,
            self.pipeline.accept,
            lambda reason: self.metrics.refused.labels(reason).inc(),
        )
        self.listener = Listener(EventReader(chain), deployment.ws_url, settings.poll_interval_s)
        self.ready = False

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def run(self) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        hw = self.settings.hardware
        registered = await self.reporter.ensure_registered(
            self.settings.url,
            Hardware(hw.memory_mb, hw.compute_score, hw.bandwidth_mbps),
            self.link_key.public,
            self.settings.stake_wei,
        )
        log.info(
            "node %s %s, serving %s",
            self.address,
            "registered" if registered else "already registered",
            self.settings.url,
        )
        config = uvicorn_config(self, self.settings.listen_host, self.settings.listen_port)
        server = NodeServer(config)
        server_task = asyncio.create_task(server.serve())
        follow_task = asyncio.create_task(self._follow())
        try:  # cancelled on SIGTERM / SIGINT: the server stops first, then everything else
            await asyncio.wait({server_task, follow_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            server.should_exit = True
            follow_task.cancel()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(follow_task, server_task, return_exceptions=True)
            await self.settlement.drain(STORE_DRAIN_S)
            await self.peers.close()
            await self.links.close()
            self.state.save()
            log.info("node stopped")

    async def _follow(self) -> None:
        self.settlement.store_spooled()  # evidence a previous run named but had not stored yet
        # catch up: rebuild the view from the deployment block, act only past the saved position
        async for event in self.listener.catch_up(self.deploy_block):
            self._on_event(event)
        await self.swarm.join()  # before fetching: connected to whichever daemons hold the blocks
        self.spawn(self.swarm.run())
        await self.spans.reconcile()
        self.ready = True
        for audit_id in self.committee.unresolved():
            self.spawn(self.committee.serve(audit_id))
        log.info("caught up at block %d", self.listener.last_key[0])
        async for event in self.listener.stream(self.listener.last_key[0] + 1):
            self._on_event(event)

    def _on_event(self, event: Event) -> None:
        try:
            self.ledger.apply(event)
            if event.name in ("JobRouted", "JobRerouted"):
                self.pipeline.route_known(event.args["jobId"])
            if self.state.acted_on(event.key):
                return  # handled before a restart: never act twice
            acted = self._act(event)
        except Exception:
            log.exception("could not handle %s at block %d", event.name, event.block_number)
            acted = True
        # saved at once past an event acted on; past the others (most of them) now and then
        self.state.advance(event.key, durable=acted)

    def _act(self, event: Event) -> bool:
        """Do what the event asks of this node; whether it asked anything (forgetting a job this
        node never ran is nothing)."""
        actions = actions_for(self.address, event, self.ledger, self.executor.jobs)
        asked = any(not isinstance(a, DropJob) or a.job_id in self.executor.jobs for a in actions)
        for action in actions:
            match action:
                case LoadSpan(model_id, span):
                    self.spawn(self.spans.load(model_id, span))
                case UnloadSpan(model_id):
                    self.spans.unload(model_id)
                case PrefetchInput(job_id):
                    self.pipeline.prefetch_input(job_id)
                case StartJob(job_id):
                    log.info("picked up job %d as stage 0", job_id, extra={"job": job_id})
                    self.spawn(self.pipeline.start_job(job_id, picked_up_at=time.time()))
                case AdoptRoute(job_id):
                    self.spawn(self.pipeline.rerouted(job_id))
                case ContestReroute(job_id):
                    contest = self.pipeline.settlement.contest_replacement(job_id)
                    if contest is not None:
                        self.spawn(contest)
                case DropJob(job_id):
                    self.pipeline.drop(job_id)
                case ClaimAborted(job_id):
                    self.spawn(self.pipeline.claim_aborted(job_id))
                case OpenAudits(job_id, result_block):
                    if self.ready:  # a result seen while catching up is long past its draw
                        self.spawn(self.committee.open_audits(job_id, result_block))
                case ServeOnCommittee(audit_id):
                    self.spawn(self.committee.serve(audit_id))
        return asked

    def health(self) -> dict[str, Any]:
        return {
            "node": self.address,
            "ready": self.ready,
            "listener": self.listener.mode,
            "block": self.listener.last_key[0],
            "spans": {m: [s.span.start, s.span.end] for m, s in self.executor.spans.items()},
            "jobs_in_progress": len(self.executor.jobs),
            "ms_per_block": self.executor.ms_per_block,
            "forward_calls": self.executor.calls,
            "decode_batches": self.executor.decoding.batches,  # batches of several generations' decode steps
            "batched_steps": self.executor.decoding.batched_steps,
            "decode_ms_total": round(self.executor.decoding.decode_ms_total, 1),
        }


async def run_node(settings: NodeSettings) -> None:
    await NodeAgent(settings).run()
