"""Span management: fetch, verify and load the span a coordinator assigns this node, then
confirm it on-chain; at start-up, load whatever the chain says this node serves.

Runs inside the event-follow task, so nothing a bad span, manifest or block raises may escape:
every failure is logged with the span it concerns and the node carries on. A load that fails
(the node's IPFS daemon restarting, no peer holding the blocks yet) is tried again, at growing
intervals, for as long as the chain still assigns that span to this node: a span left
unconfirmed would leave the model without a cover until the coordinator plans it away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from node.executor import Executor
from node.reporter import Reporter
from shardnet.ledger import Ledger
from shardnet.protocol import JobStatus, Span

log = logging.getLogger("shardnet.node.spans")

RETRY_FIRST_S = 2.0  # a failed load is tried again after this, then twice as long each time...
RETRY_MAX_S = 30.0  # ...up to this
CONFIRM_TRIES = 5  # confirmShard sent this many times at most, backing off the same way
SPAN_WAIT_S = 30.0  # a job routed to stage 0 here waits this long for its assigned span to load


class SpanManager:
    def __init__(
        self,
        address: str,
        ledger: Ledger,
        executor: Executor,
        reporter: Reporter,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        rejoin: Callable[[], Awaitable[object]] | None = None,
    ):
        self.address = address
        self.ledger = ledger
        self.executor = executor
        self.reporter = reporter
        self.spawn = spawn  # runs a load tried again later (the agent's: cancelled when it stops)
        self.rejoin = rejoin  # before a load is tried again: reconnect to the IPFS peers
        self.loading: set[tuple[int, Span]] = set()  # (model, span) being fetched
        self.retry_first_s, self.retry_max_s = RETRY_FIRST_S, RETRY_MAX_S

    async def reconcile(self) -> None:
        """Load every span the chain assigns this node that is not served or loading yet."""
        for model_id in list(self.ledger.assignments):
            await self.ensure(model_id)

    async def ensure(self, model_id: int) -> None:
        """Load the span of the model the chain assigns this node now, unless it is served or
        being loaded already."""
        mine = self.ledger.assignments.get(model_id, {}).get(self.address)
        if mine is None or (model_id, mine.span) in self.loading:
            return
        served = self.executor.spans.get(model_id)
        if served is None or served.span != mine.span:
            await self.load(model_id, mine.span)

    async def load(self, model_id: int, span: Span, retry_in: float | None = None) -> None:
        """Fetch, verify and serve the span, then confirm it. A failed fetch is tried again in
        the background after `retry_in` s (RETRY_FIRST_S at first, doubling to RETRY_MAX_S)
        while the chain still assigns the span to this node."""
        model = self.ledger.models.get(model_id)
        if model is None:
            log.error("span [%d, %d) of unknown model %d: not loaded", span.start, span.end, model_id)
            return
        if (model_id, span) in self.loading:
            return  # asked twice (an event replayed at start-up, then the reconcile)
        self.loading.add((model_id, span))
        try:
            loaded = await asyncio.to_thread(self.executor.load, model_id, model.manifest_cid, span)
        except Exception as exc:  # noqa: BLE001 - a bad span must never end the event-follow task
            failed = f"could not load blocks [{span.start}, {span.end}) of model {model_id}: {exc}"
            if not self._assigned(model_id, span):
                log.error("%s", failed)
                return
            delay = retry_in or self.retry_first_s
            log.error("%s; trying again in %.0f s", failed, delay)
            self.spawn(self._load_later(model_id, span, delay))
            return
        finally:
            self.loading.discard((model_id, span))
        # loads of successive assignments run side by side and may end in any order: only the
        # span the chain assigns this node now becomes the one it serves
        now = self.ledger.assignments.get(model_id, {}).get(self.address)
        if now is None or now.span != span:
            log.info(
                "blocks [%d, %d) of model %d loaded after the assignment moved on (to %s); not served",
                span.start,
                span.end,
                model_id,
                f"[{now.start}, {now.end})" if now is not None else "none",
            )
            # the current one may have had no load of its own: one started while catching up at
            # start-up, say, on an event past the saved position that a later assignment replaced
            await self.ensure(model_id)
            return
        self.executor.serve(loaded)
        self.executor.prune_retired(model_id, self.routed_here(model_id))
        log.info("loaded and verified blocks [%d, %d) of model %d", span.start, span.end, model_id)
        try:  # kept on this node's IPFS daemon and served onward to peers
            await asyncio.to_thread(self.executor.pin, model_id)
        except Exception as exc:  # noqa: BLE001 - the span is loaded; a pin is retried at the next load
            log.warning("could not pin the span of model %d on IPFS: %s", model_id, exc)
        # confirmShard confirms whatever is assigned now: only if that is still what was loaded
        assignment = self.ledger.assignments.get(model_id, {}).get(self.address)
        served = self.executor.spans.get(model_id) is loaded
        if assignment is not None and assignment.span == span and not assignment.confirmed and served:
            await self._confirm(model_id, span)

    async def _confirm(self, model_id: int, span: Span) -> None:
        """confirmShard, sent again (backing off) while the chain still shows this span assigned,
        unconfirmed and served here: a chain restarting or refusing a transaction for a moment
        must not leave it unconfirmed until the coordinator plans it away."""
        delay = self.retry_first_s
        for _ in range(CONFIRM_TRIES):
            if await self.reporter.confirm_shard(model_id):
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)
            now = self.ledger.assignments.get(model_id, {}).get(self.address)
            served = self.executor.spans.get(model_id)
            if now is None or now.span != span or now.confirmed or served is None or served.span != span:
                return

    async def _load_later(self, model_id: int, span: Span, delay: float) -> None:
        await asyncio.sleep(delay)
        served = self.executor.spans.get(model_id)
        if not self._assigned(model_id, span) or (served is not None and served.span == span):
            return  # moved on meanwhile (a load of the new span was started), or loaded by another way
        if self.rejoin is not None:
            await self.rejoin()
        await self.load(model_id, span, min(delay * 2, self.retry_max_s))

    def _assigned(self, model_id: int, span: Span) -> bool:
        """Whether the chain assigns `span` of the model to this node now."""
        now = self.ledger.assignments.get(model_id, {}).get(self.address)
        return now is not None and now.span == span

    def unload(self, model_id: int) -> None:
        self.executor.unload(model_id)
        self.executor.prune_retired(model_id, self.routed_here(model_id))

    def routed_here(self, model_id: int) -> set[tuple[int, int]]:
        """The blocks of every stage on this node of a routed, unfinished job of the model: the
        spans it served before a move that such jobs still need."""
        return {
            (stage.start, stage.end)
            for job in self.ledger.jobs.values()
            if job.model_id == model_id and job.status == JobStatus.ROUTED
            for stage in job.route
            if stage.node == self.address
        }


async def span_loaded(address: str, ledger: Ledger, executor: Executor, model_id: int) -> bool:
    """Whether this node serves a span of the model, waiting up to SPAN_WAIT_S while the chain
    assigns it one not loaded yet: a node catching up after a restart meets the jobs routed to it
    before its span is loaded again, and would abort them for nothing."""
    deadline = time.monotonic() + SPAN_WAIT_S
    while model_id not in executor.spans:
        if address not in ledger.assignments.get(model_id, {}) or time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
