"""Settling overdue jobs, so no escrow stays locked: the coordinator's expiry loop.

A posted job is expired once its deadline has passed; a routed one once the claim window after
its deadline has closed (the stages that proved delivery are paid, the others recorded failed);
an aborted routed job the same way once the claim window after its abort has closed. Judged by
the chain's clock, the one the contract uses. Any account may expire a job; the coordinator
does it for the jobs it sees.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from shardnet.bindings import ZERO_ADDRESS
from shardnet.bindings.market import JobMarket
from shardnet.chain import UNREACHABLE, Chain
from shardnet.ledger import Ledger
from shardnet.protocol import JobStatus, Stage

log = logging.getLogger("shardnet.coordinator")

EXPIRY_ATTEMPTS = 3  # expireJob tries per overdue job (events settle it in the ledger on success)

# (what, a binding's transaction, its arguments) -> whether it was mined; failures are logged
Transact = Callable[..., Awaitable[bool]]


async def expire_overdue(chain: Chain, market: JobMarket, ledger: Ledger, tx: Transact, interval_s: float) -> None:
    """Every `interval_s`, send expireJob for each overdue job in `ledger` (the coordinator's
    view, kept up to date by chain events), at most EXPIRY_ATTEMPTS times per job: a refusal is
    logged, not repeated forever. A chain that does not answer (restarting) skips a sweep, and
    never ends the loop."""
    claim_window = await asyncio.to_thread(market.claim_window_s)
    attempts: dict[int, int] = {}
    while True:
        await asyncio.sleep(interval_s)
        try:
            block = await asyncio.to_thread(chain.w3.eth.get_block, "latest")
        except UNREACHABLE as exc:  # restarting: the next sweep
            log.warning(
                "expiry sweep: the chain does not answer (%s); next sweep in %.0f s", type(exc).__name__, interval_s
            )
            continue
        now = int(block["timestamp"])
        for job_id, job in list(ledger.jobs.items()):
            if attempts.get(job_id, 0) >= EXPIRY_ATTEMPTS:
                continue
            if job.status == JobStatus.POSTED and now > job.deadline:
                route: list[Stage] = []
            elif job.status in (JobStatus.ROUTED, JobStatus.ABORTING) and now > job.deadline + claim_window:
                route = job.route
            else:
                continue
            attempts[job_id] = attempts.get(job_id, 0) + 1
            coordinator = job.coordinator or ZERO_ADDRESS
            if await tx(f"expireJob({job_id})", market.expire_job, job_id, coordinator, route):
                log.info("job %d expired", job_id)
