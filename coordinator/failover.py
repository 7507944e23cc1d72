"""Rerouting around a node that stopped answering: each open job this coordinator routed
through it gets the same route with the dead node's stages moved to replicas (rerouteJob), and
the stage before replays what it sent, so the replacement rebuilds its KV cache. A job whose
dead stage has no replica is left to expire (coordinator.expiry)."""

from __future__ import annotations

import logging

from coordinator.expiry import Transact
from shardnet.bindings.market import JobMarket
from shardnet.ledger import Ledger
from shardnet.protocol import JobStatus, Stage

log = logging.getLogger("shardnet.coordinator")


def replica(ledger: Ledger, model_id: int, stage: Stage, usable: set[str], on_route: set[str]) -> str | None:
    """A usable node off the route whose confirmed span covers `stage`'s blocks and ends where
    it ends (the next stage then enters where it did), the lowest address first."""
    for node, a in sorted(ledger.confirmed(model_id).items()):
        if node in usable and node not in on_route and a.start <= stage.start and a.end == stage.end:
            return node
    return None


async def reroute_around(
    dead: str, coordinator: str, ledger: Ledger, usable: set[str], market: JobMarket, tx: Transact
) -> None:
    """Reroute `coordinator`'s open jobs around `dead` (only the routing coordinator may),
    over replicas among `usable`."""
    for job_id, job in list(ledger.jobs.items()):
        if job.status != JobStatus.ROUTED or job.coordinator != coordinator:
            continue
        if all(s.node != dead for s in job.route):
            continue
        old = job.route
        new = []
        for stage in old:
            if stage.node != dead:
                new.append(stage)
                continue
            node = replica(ledger, job.model_id, stage, usable, {s.node for s in old})
            if node is None:
                log.warning("job %d: no replica holds blocks [%d, %d); it will expire", job_id, stage.start, stage.end)
                break
            new.append(stage._replace(node=node))
        else:
            if await tx(f"rerouteJob({job_id})", market.reroute_job, job_id, job.coordinator, old, new):
                log.info("job %d rerouted around %s", job_id, dead)
