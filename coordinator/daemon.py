"""The coordinator daemon: follows chain events, assigns spans for new models, routes posted jobs.

It keeps nothing that chain events cannot rebuild: on start it replays the history from
the deployment block and reconciles (assign what is unassigned, route what is posted).
"""

from __future__ import annotations

import asyncio
import logging
import time

from eth_account.signers.local import LocalAccount

from coordinator.planner import plan_pipeline
from coordinator.router import route_any, route_cost
from shardnet.bindings import Contracts, send_logged
from shardnet.chain import Chain
from shardnet.deployment import Deployment
from shardnet.ledger import Ledger
from shardnet.listener import Listener
from shardnet.protocol import JobStatus, Stage

log = logging.getLogger("shardnet.coordinator")
TRIGGERS = {"NodeRegistered", "StakeAdded", "UnstakeRequested", "ModelRegistered", "ShardConfirmed",
            "ShardReleased", "JobPosted", "NodeSlashed"}


class Coordinator:
    def __init__(self, deployment: Deployment, account: LocalAccount, poll_interval_s: float = 0.2):
        self.deployment = deployment
        self.account = account
        self.chain = Chain.from_deployment(deployment, account=account)
        self.c = Contracts(self.chain)
        self.ledger = Ledger()
        self.listener = Listener(self.chain, [deployment.contracts[n].address for n in
                                              ("NodeRegistry", "ModelRegistry", "JobMarket")],
                                 deployment.ws_url, poll_interval_s)
        self.min_stake = self.c.nodes.min_stake()
        self.fee_bps = self.c.market.coordinator_fee_bps()
        self.unroutable_logged: set[int] = set()
        self.failed: set[str] = set()  # nodes that stopped answering probes
        self.probe_failures: dict[str, int] = {}
        self.probe_interval_s = 0.5

    async def run(self) -> None:
        async for event in self.listener._catch_up(self.deployment.deploy_block):
            self.ledger.apply(event)
        await self.reconcile()
        log.info("coordinator %s caught up at block %d", self.account.address, self.listener.last_key[0])
        probes = asyncio.create_task(self._probe_loop())
        try:
            async for event in self.listener.stream(self.listener.last_key[0] + 1):
                self.ledger.apply(event)
                if event.name in TRIGGERS:
                    await self.reconcile()
        finally:
            probes.cancel()

    # ------------------------------------------------------------------ failover
    async def _probe_loop(self) -> None:
        """Probe the nodes on open routes; a node that misses two probes in a row is replaced."""
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http:
            while True:
                await asyncio.sleep(self.probe_interval_s)
                busy = {s[0] for j in self.ledger.jobs.values() if j.status == JobStatus.ROUTED for s in j.route}
                for node in sorted(busy - self.failed):
                    try:
                        async with http.get(self.ledger.endpoints[node].rstrip("/") + "/health") as response:
                            alive = response.status == 200
                    except (aiohttp.ClientError, asyncio.TimeoutError, KeyError):
                        alive = False
                    self.probe_failures[node] = 0 if alive else self.probe_failures.get(node, 0) + 1
                    if self.probe_failures[node] >= 2:
                        self.failed.add(node)
                        log.warning("node %s stopped answering; rerouting its jobs", node)
                        await self._failover(node)

    async def _failover(self, dead: str) -> None:
        for job_id, job in list(self.ledger.jobs.items()):
            if job.status != JobStatus.ROUTED or all(s[0] != dead for s in job.route):
                continue
            old = [Stage(*s) for s in job.route]
            new = []
            for stage in old:
                if stage.node != dead:
                    new.append(stage)
                    continue
                replica = self._replica(job.model_id, stage, {s.node for s in old})
                if replica is None:
                    log.warning("job %d: no replica holds blocks [%d, %d); it will expire", job_id, stage.start,
                                stage.end)
                    break
                new.append(Stage(replica, stage.start, stage.end, stage.fee))
            else:
                if await self._tx(f"rerouteJob({job_id})", self.c.market.reroute_job, job_id, job.coordinator, old,
                                  new):
                    log.info("job %d rerouted around %s", job_id, dead)

    def _replica(self, model_id: int, stage: Stage, on_route: set[str]) -> str | None:
        active = set(self.ledger.active_nodes(self.min_stake)) - self.failed
        for node, (start, end, confirmed) in sorted(self.ledger.assignments.get(model_id, {}).items()):
            if confirmed and node in active and node not in on_route and (start, end) == (stage.start, stage.end):
                return node
        return None

    async def reconcile(self) -> None:
        await self._assign_models()
        await self._route_jobs()

    async def _tx(self, what: str, fn, *args) -> bool:
        return await send_logged(log, what, fn, *args, account=self.account) is not None

    async def _assign_models(self) -> None:
        active = self.ledger.active_nodes(self.min_stake)
        for model_id, model in self.ledger.models.items():
            if model.get("deprecated") or self.ledger.assignments.get(model_id):
                continue
            plan = plan_pipeline([n for n in active if n not in self.failed], model["blockCount"])
            for node, span in plan.items():
                await self._tx(f"assignShard({model_id}, {node})", self.c.models.assign_shard, model_id, node,
                               span.start, span.end)
            if plan:
                log.info("model %d: assigned %d spans", model_id, len(plan))

    async def _route_jobs(self) -> None:
        now = time.time()
        active = set(self.ledger.active_nodes(self.min_stake))
        for job_id, job in list(self.ledger.jobs.items()):
            if job.status != JobStatus.POSTED or job.deadline <= now:
                continue
            model = self.ledger.models.get(job.model_id)
            stages = route_any(self.ledger.assignments.get(job.model_id, {}), model["blockCount"],
                               model["pricePerBlock"], active - self.failed)
            if stages is None:
                if job_id not in self.unroutable_logged:
                    log.info("job %d waits: no confirmed cover of model %d yet", job_id, job.model_id)
                    self.unroutable_logged.add(job_id)
                continue
            cost = route_cost(stages, self.fee_bps)
            if cost > job.max_fee:
                await self._tx(f"abortJob({job_id})", self.c.market.abort_job, job_id, self.account.address, [],
                               f"max fee {job.max_fee} wei is below the route's cost {cost} wei; post again with "
                               f"--max-fee >= {cost}")
                job.status = JobStatus.ABORTED
                continue
            if await self._tx(f"routeJob({job_id})", self.c.market.route_job, job_id, stages):
                job.status = JobStatus.ROUTED  # the JobRouted event confirms it shortly
                log.info("job %d routed through %d stages", job_id, len(stages))
