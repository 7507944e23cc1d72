"""The coordinator daemon: follows chain events, assigns spans for new models, routes posted jobs,
probes the nodes (coordinator.health), reroutes around those that stop answering
(coordinator.failover), and expires overdue jobs (coordinator.expiry).

It keeps nothing that chain events cannot rebuild: on start it replays the history from
the deployment block and reconciles (assign what is unassigned, route what is posted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from eth_account.signers.local import LocalAccount

from coordinator.bond import ensure_bond
from coordinator.expiry import expire_overdue
from coordinator.failover import reroute_around
from coordinator.health import Change, NodeHealth, probe
from coordinator.planner import ModelSpec, NodeSpec, evaluate, plan, plan_pipeline
from coordinator.router import Candidate, RouteWeights, route, route_cost
from shardnet.bindings import Contracts, send_logged
from shardnet.chain import Chain
from shardnet.deployment import Deployment
from shardnet.errors import JobInputError
from shardnet.events import EventReader, Listener
from shardnet.jobs import JobParams
from shardnet.ledger import JobRecord, Ledger
from shardnet.protocol import Hardware, JobStatus, Span

log = logging.getLogger("shardnet.coordinator")
TRIGGERS = {
    "NodeRegistered",
    "StakeAdded",
    "UnstakeRequested",
    "ModelRegistered",
    "ShardConfirmed",
    "ShardReleased",
    "JobPosted",
    "NodeSlashed",
}


PLANNERS = ("pipeline", "throughput")
UNDECLARED = Hardware(4096, 10, 0)  # what the planner assumes of a node with no profile event yet


class Coordinator:
    """`planner="pipeline"`: even spans over the first `min_stages` nodes, extra nodes replicate
    (a predictable devnet layout). `planner="throughput"`: `coordinator.planner.plan` over every
    active node's memory and measured throughput, re-planned when nodes join or leave and every
    `rebalance_interval_s` when the bottleneck would improve by `rebalance_factor`."""

    def __init__(
        self,
        deployment: Deployment,
        account: LocalAccount,
        poll_interval_s: float = 0.2,
        planner: str = "pipeline",
        replicas: int = 2,
        min_stages: int = 3,
        rebalance_interval_s: float = 10.0,
        rebalance_factor: float = 1.2,
        confirm_timeout_s: float = 300.0,
        replan_after_s: float = 60.0,
    ):
        self.deployment = deployment
        self.account = account
        self.chain = Chain.from_deployment(deployment, account=account)
        self.c = Contracts(self.chain)
        self.ledger = Ledger()
        self.listener = Listener(EventReader(self.chain), deployment.ws_url, poll_interval_s)
        self.min_stake = self.c.nodes.min_stake()
        self.fee_bps = self.c.market.coordinator_fee_bps()
        self.unroutable_logged: set[int] = set()
        self.probe_interval_s = 0.5
        self.expiry_interval_s = 2.0  # how often overdue jobs are looked for
        self.health = NodeHealth(replan_after_s)  # a node down this long has its spans planned away
        self.planner, self.replicas, self.min_stages = planner, replicas, min_stages
        self.rebalance_interval_s, self.rebalance_factor = rebalance_interval_s, rebalance_factor
        self.block_mb: dict[int, tuple[float, ...]] = {}  # model -> memory per block (from its manifest)
        self.planned_nodes: dict[int, frozenset[str]] = {}  # model -> usable nodes when last planned
        self.sent: dict[tuple[int, str], Span] = {}  # (model, node) -> span last assigned by this process
        self.assigned_at: dict[tuple[int, str], float] = {}  # (model, node) -> when its span was assigned
        self.confirm_timeout_s = confirm_timeout_s  # an unconfirmed span is planned away after this
        self.planned_away: dict[int, set[str]] = {}  # model -> nodes planned away while down

    async def run(self) -> None:
        import aiohttp

        await asyncio.to_thread(ensure_bond, self.c, self.account)
        async for event in self.listener.catch_up(self.deployment.deploy_block):
            self.ledger.apply(event)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http:
            for _ in range(2):  # registered is not alive: find the nodes that answer before planning
                await self._probe_round(http)
        await self.reconcile()
        log.info("coordinator %s caught up at block %d", self.account.address, self.listener.last_key[0])
        expiry = expire_overdue(self.chain, self.c.market, self.ledger, self._tx, self.expiry_interval_s)
        tasks = [asyncio.create_task(self._probe_loop()), asyncio.create_task(expiry)]
        if self.planner == "throughput":
            tasks.append(asyncio.create_task(self._rebalance_loop()))
        try:
            async for event in self.listener.stream(self.listener.last_key[0] + 1):
                self.ledger.apply(event)
                a = event.args
                if event.name == "RerouteContested" and event.args["coordinator"] == self.account.address:
                    log.warning("node %s contested this coordinator's reroute of job %d", a["node"], a["jobId"])
                    await asyncio.to_thread(ensure_bond, self.c, self.account, starting=False)
                if event.name in TRIGGERS:
                    await self.reconcile()
        finally:
            for task in tasks:
                task.cancel()

    # ------------------------------------------------------------------ probes and failover
    async def _probe_loop(self) -> None:
        """Probe every registered node (coordinator.health): round-trip times and measured
        compute feed the router and the planner; a node that misses two probes in a row is down
        (not planned over or routed through until it answers again), and its open routes are
        rerouted (coordinator.failover)."""
        import aiohttp

        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http:
            while True:
                await asyncio.sleep(self.probe_interval_s)
                if await self._probe_round(http):
                    await self.reconcile()  # a node came back, or is gone: plan again

    async def _probe_round(self, http: Any) -> bool:
        """One probe of every node; True when the set of usable nodes changed (one came back, or
        is gone: down long enough to plan its spans away)."""
        busy = {s.node for j in self.ledger.jobs.values() if j.status == JobStatus.ROUTED for s in j.route}
        changed = False
        for node in sorted(self.ledger.endpoints):
            answer = await probe(http, self.ledger.endpoints[node])
            if answer is not None:
                if self.health.answered(node, *answer) is Change.UP:
                    changed = True
                    log.info("node %s answers again", node)
                continue
            if self.health.missed(node) is Change.DOWN:
                log.warning("node %s stopped answering%s", node, "; rerouting its jobs" if node in busy else "")
                if node in busy:
                    usable = self.health.up(set(self.ledger.active_nodes(self.min_stake)))
                    await reroute_around(node, self.account.address, self.ledger, usable, self.c.market, self._tx)
            if self.health.newly_gone(node):
                changed = True  # down long enough: plan its spans away
        return changed

    async def reconcile(self) -> None:
        await self._assign_models()
        await self._route_jobs()

    async def _tx(self, what: str, fn: Callable[..., dict[str, Any]], *args: Any) -> bool:
        return await send_logged(log, what, fn, *args, account=self.account) is not None

    async def _assign_models(self) -> None:
        active = self.ledger.active_nodes(self.min_stake)
        for model_id, model in self.ledger.models.items():
            if model.deprecated:
                continue
            if self.planner == "throughput":
                usable = frozenset(n for n in active if not self.health.gone(n))
                holders = set(self.ledger.assignments.get(model_id, {}))
                if usable != self.planned_nodes.get(model_id) and (usable - holders or holders - usable):
                    await self._rebalance(model_id, force=True)  # a node joined or left
                continue
            live = [n for n in active if not self.health.gone(n) and not self._stale(model_id, n)]
            assigned = self.ledger.assignments.get(model_id, {})
            away = self.planned_away.get(model_id, set())
            back = away & set(live) - set(assigned)  # planned away while down; answering again
            if assigned and all(n in live for n in assigned) and not back:
                continue
            if assigned and frozenset(live) == self.planned_nodes.get(model_id):
                continue  # planned over these nodes already; wait for the events
            gone = sorted(set(assigned) - set(live))
            if gone:
                log.warning("model %d: %s down or never confirmed; planning again", model_id, ", ".join(gone))
            if back:
                log.info("model %d: %s answering again; planning again", model_id, ", ".join(sorted(back)))
            spans = plan_pipeline(live, model.block_count, self.min_stages)
            self.planned_nodes[model_id] = frozenset(live)
            self.planned_away[model_id] = (away | {n for n in gone if self.health.gone(n)}) - set(spans)
            for node, span in spans.items():
                if assigned.get(node) is not None and assigned[node].span == span:
                    continue
                if await self._tx(
                    f"assignShard({model_id}, {node})", self.c.models.assign_shard, model_id, node, span.start, span.end
                ):
                    self.assigned_at[(model_id, node)] = time.monotonic()
            for node in sorted(set(assigned) - set(spans)):
                await self._tx(f"releaseShard({model_id}, {node})", self.c.models.release_shard, model_id, node)
            if spans:
                log.info("model %d: assigned %d spans", model_id, len(spans))

    def _stale(self, model_id: int, node: str) -> bool:
        """A span assigned to `node` and still unconfirmed after `confirm_timeout_s` (timed from
        when this process assigned it or first saw it)."""
        a = self.ledger.assignments.get(model_id, {}).get(node)
        if a is None or a.confirmed:
            return False
        since = self.assigned_at.setdefault((model_id, node), time.monotonic())
        return time.monotonic() - since > self.confirm_timeout_s

    # ------------------------------------------------------------------ planning from measurements
    def node_specs(self, nodes: list[str]) -> list[NodeSpec]:
        """What the planner knows of each node: declared memory; throughput as measured while
        serving (block-forwards/s), or, for a node not measured yet, its declared compute score
        scaled by how the measured nodes' scores compare with their measurements."""
        declared = {n: self.ledger.hardware.get(n, UNDECLARED).compute_score for n in nodes}
        measured = self.health.ms_per_block
        ratios = sorted((1000.0 / measured[n]) / declared[n] for n in nodes if n in measured)
        scale = ratios[len(ratios) // 2] if ratios else 1.0
        specs = []
        for n in nodes:
            acct = self.ledger.accounts.get(n)
            done, failed = (acct.jobs_done, acct.jobs_failed) if acct else (0, 0)
            throughput = 1000.0 / measured[n] if n in measured else declared[n] * scale
            specs.append(
                NodeSpec(
                    n,
                    float(self.ledger.hardware.get(n, UNDECLARED).memory_mb),
                    throughput,
                    self.health.rtt(n),
                    (done + 1) / (done + failed + 1),
                )
            )
        return specs

    async def _model_spec(self, model_id: int) -> ModelSpec:
        """Per-block memory from the model's manifest (blocks load as float32: ~4x their int8 bytes)."""
        model = self.ledger.models[model_id]
        if model_id not in self.block_mb:
            try:
                from shardnet.model.manifest import fetch_manifest
                from shardnet.storage import IpfsClient

                with IpfsClient(self.deployment.ipfs_api) as ipfs:
                    manifest = await asyncio.to_thread(fetch_manifest, ipfs, model.manifest_cid, 10.0)
                self.block_mb[model_id] = tuple(4 * b["bytes"] / 2**20 for b in manifest.blocks)
            except Exception as exc:  # noqa: BLE001 - plan by block count when the manifest is unreadable
                log.warning("model %d: manifest unreadable (%s); planning with unit block sizes", model_id, exc)
                return ModelSpec.uniform(model.block_count, block_mb=1.0)
        return ModelSpec(self.block_mb[model_id], (1.0,) * len(self.block_mb[model_id]))

    async def _rebalance_loop(self) -> None:
        while True:
            await asyncio.sleep(self.rebalance_interval_s)
            for model_id, model in list(self.ledger.models.items()):
                if not model.deprecated:
                    await self._rebalance(model_id)

    async def _rebalance(self, model_id: int, force: bool = False) -> None:
        """Re-plan a model over the usable nodes; apply the plan when nodes joined or left
        (`force`) or when it lifts the bottleneck by `rebalance_factor`. Only changed spans are
        sent (assignShard / releaseShard); a moved node reloads and confirms, and routes use
        confirmed spans only, so running jobs keep the spans they were routed on."""
        usable = sorted(n for n in self.ledger.active_nodes(self.min_stake) if not self.health.gone(n))
        if not usable:
            return
        spec = await self._model_spec(model_id)
        specs = self.node_specs(usable)
        by_address = {n.address: n for n in specs}
        stages = min(self.min_stages, spec.blocks)
        # spans tile the model on `stages` even boundaries: replicas of a span are interchangeable
        boundaries = tuple(spec.blocks * i // stages for i in range(stages + 1)) if stages > 1 else None
        new = plan(specs, spec, self.replicas, max_span=-(-spec.blocks // stages), boundaries=boundaries)
        current = {n: a.span for n, a in self.ledger.assignments.get(model_id, {}).items() if n in by_address}
        now = evaluate(current, by_address, spec, self.replicas)
        better = new.slowest >= self.rebalance_factor * now.slowest if now.slowest > 0 else new.slowest > 0
        self.planned_nodes[model_id] = frozenset(usable)
        if not force and not better:
            return
        moves = {
            n: s for n, s in new.spans.items() if current.get(n) != s and self.sent.get((model_id, n)) != s
        }  # events may lag our own sends
        for node, span in sorted(moves.items()):
            if await self._tx(
                f"assignShard({model_id}, {node})", self.c.models.assign_shard, model_id, node, span.start, span.end
            ):
                self.sent[(model_id, node)] = span
        for node in sorted(set(self.ledger.assignments.get(model_id, {})) - set(new.spans)):  # down ones too
            await self._tx(f"releaseShard({model_id}, {node})", self.c.models.release_shard, model_id, node)
        if moves:
            log.info(
                "model %d: planned %d nodes, moved %d; slowest block %.1f -> %.1f tokens/s",
                model_id,
                len(new.spans),
                len(moves),
                now.slowest,
                new.slowest,
            )

    def _candidates(self, model_id: int, price_per_block: int, specs: dict[str, NodeSpec]) -> list[Candidate]:
        """Confirmed spans of usable nodes, with what `node_specs` knows of each: probe round-trip
        time, measured compute, and reputation from delivered and failed stages."""
        return [
            Candidate(
                node,
                a.start,
                a.end,
                price_per_block,
                specs[node].latency_ms,
                1000.0 / specs[node].throughput,
                specs[node].reputation,
            )
            for node, a in sorted(self.ledger.confirmed(model_id).items())
            if node in specs
        ]

    async def _route_jobs(self) -> None:
        now = time.time()
        usable = self.health.up(set(self.ledger.active_nodes(self.min_stake)))
        specs = {s.address: s for s in self.node_specs(sorted(usable))}  # once per pass, not per job
        for job_id, job in list(self.ledger.jobs.items()):
            if job.status != JobStatus.POSTED or job.deadline <= now:
                continue
            try:
                params = JobParams.decode(job.params)
            except JobInputError as exc:
                await self._abort(job_id, job, str(exc))
                continue
            model = self.ledger.models.get(job.model_id)
            if model is None:  # the market refuses jobs on unknown models; nothing to route
                continue
            candidates = self._candidates(job.model_id, model.price_per_block, specs)
            cheapest = route(candidates, model.block_count, RouteWeights(latency=0, price=1))
            if cheapest is None:
                if job_id not in self.unroutable_logged:
                    log.info("job %d waits: no confirmed cover of model %d yet", job_id, job.model_id)
                    self.unroutable_logged.add(job_id)
                continue
            fee_bps, reserve_bps = self._rates(job)
            cost = route_cost(cheapest, fee_bps, reserve_bps)
            if cost > job.max_fee:
                await self._abort(
                    job_id,
                    job,
                    f"max fee {job.max_fee} wei is below the route's cost {cost} wei; "
                    f"post again with --max-fee >= {cost}",
                )
                continue
            weights = RouteWeights(
                latency=params.route_latency,
                price=params.route_price,
                trust=params.route_trust,
                max_fee=job.max_fee * 10_000 // (10_000 + fee_bps + reserve_bps),
                min_reputation=params.min_reputation,
                avoid=frozenset(params.avoid),
            )
            stages = route(candidates, model.block_count, weights)
            if stages is None:
                await self._abort(job_id, job, "no route satisfies the job's limits (min_reputation, avoid, max fee)")
                continue
            if await self._tx(f"routeJob({job_id})", self.c.market.route_job, job_id, stages):
                job.status = JobStatus.ROUTED  # the JobRouted event confirms it shortly
                log.info("job %d routed through %d stages", job_id, len(stages))

    def _rates(self, job: JobRecord) -> tuple[int, int]:
        """The cut rate a route would get now, and the audit reserve rate the job needs (both in
        basis points of the stage fees), from the market's terms as its events last set them."""
        terms = self.ledger.terms
        if terms is None:
            return self.fee_bps, 0
        reserve = terms.committee_size * terms.verify_fee_bps if job.audit_bps else 0
        return terms.coordinator_fee_bps, reserve

    async def _abort(self, job_id: int, job: JobRecord, reason: str) -> None:
        await self._tx(f"abortJob({job_id})", self.c.market.abort_job, job_id, self.account.address, [], reason)
        job.status = JobStatus.ABORTED
