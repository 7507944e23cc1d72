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
from coordinator.router import Candidate, RouteWeights, route, route_cost
from shardnet.bindings import Contracts, send_logged
from shardnet.chain import Chain
from shardnet.deployment import Deployment
from shardnet.jobs import JobInputError, JobParams
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
        self.rtt_ms: dict[str, float] = {}  # probe round trip per node (moving average)

    async def run(self) -> None:
        async for event in self.listener.catch_up(self.deployment.deploy_block):
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
        """Probe every node (round-trip times feed the router); a node on an open route that
        misses two probes in a row is replaced."""
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http:
            while True:
                await asyncio.sleep(self.probe_interval_s)
                busy = {s[0] for j in self.ledger.jobs.values() if j.status == JobStatus.ROUTED for s in j.route}
                for node in sorted(set(self.ledger.endpoints) - self.failed):
                    started = time.perf_counter()
                    try:
                        async with http.get(self.ledger.endpoints[node].rstrip("/") + "/health") as response:
                            alive = response.status == 200
                    except (aiohttp.ClientError, asyncio.TimeoutError, KeyError):
                        alive = False
                    if alive:
                        rtt = (time.perf_counter() - started) * 1000
                        self.rtt_ms[node] = 0.7 * self.rtt_ms.get(node, rtt) + 0.3 * rtt
                    if node not in busy:
                        continue
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

    def _candidates(self, model_id: int, price_per_block: int, usable: set[str]) -> list[Candidate]:
        """Confirmed spans with what the coordinator knows of each node: probe round-trip time,
        declared compute score, and reputation from its delivered and failed stages."""
        out = []
        for node, (start, end, confirmed) in sorted(self.ledger.assignments.get(model_id, {}).items()):
            if not confirmed or node not in usable:
                continue
            acct = self.ledger.accounts.get(node)
            done, failed = (acct.jobs_done, acct.jobs_failed) if acct else (0, 0)
            compute = (self.ledger.hardware.get(node) or (0, 10, 0))[1] or 10
            out.append(Candidate(node, start, end, price_per_block, self.rtt_ms.get(node, 50.0), 1000.0 / compute,
                                 (done + 1) / (done + failed + 1)))
        return out

    async def _route_jobs(self) -> None:
        now = time.time()
        usable = set(self.ledger.active_nodes(self.min_stake)) - self.failed
        for job_id, job in list(self.ledger.jobs.items()):
            if job.status != JobStatus.POSTED or job.deadline <= now:
                continue
            try:
                params = JobParams.decode(job.params)
            except JobInputError as exc:
                await self._abort(job_id, job, str(exc))
                continue
            model = self.ledger.models.get(job.model_id)
            candidates = self._candidates(job.model_id, model["pricePerBlock"], usable)
            cheapest = route(candidates, model["blockCount"], RouteWeights(latency=0, price=1), whole_spans=True)
            if cheapest is None:
                if job_id not in self.unroutable_logged:
                    log.info("job %d waits: no confirmed cover of model %d yet", job_id, job.model_id)
                    self.unroutable_logged.add(job_id)
                continue
            cost = route_cost(cheapest, self.fee_bps)
            if cost > job.max_fee:
                await self._abort(job_id, job, f"max fee {job.max_fee} wei is below the route's cost {cost} wei; "
                                               f"post again with --max-fee >= {cost}")
                continue
            weights = RouteWeights(latency=params.route_latency, price=params.route_price, trust=params.route_trust,
                                   max_fee=job.max_fee * 10_000 // (10_000 + self.fee_bps),
                                   min_reputation=params.min_reputation, avoid=frozenset(params.avoid))
            stages = route(candidates, model["blockCount"], weights, whole_spans=True)
            if stages is None:
                await self._abort(job_id, job, "no route satisfies the job's limits (min_reputation, avoid, max fee)")
                continue
            if await self._tx(f"routeJob({job_id})", self.c.market.route_job, job_id, stages):
                job.status = JobStatus.ROUTED  # the JobRouted event confirms it shortly
                log.info("job %d routed through %d stages", job_id, len(stages))

    async def _abort(self, job_id: int, job, reason: str) -> None:
        await self._tx(f"abortJob({job_id})", self.c.market.abort_job, job_id, self.account.address, [], reason)
        job.status = JobStatus.ABORTED
