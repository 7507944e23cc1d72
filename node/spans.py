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
from collections.abc import Awaitable, Callable

from node.executor import Executor
from node.reporter import Reporter
from node.runs import LoadedSpan
from shardnet.ledger import Ledger
from shardnet.protocol import JobStatus, Span

log = logging.getLogger("shardnet.node.spans")

RETRY_FIRST_S = 2.0  # a failed load is tried again after this, then twice as long each time...
RETRY_MAX_S = 30.0  # ...up to this


class SpanManager:
    def __init__(
        self,
        address: str,
        ledger: Ledger,
        executor: Executor,
        reporter: Reporter,
        rejoin: Callable[[], Awaitable[object]] | None = None,
    ):
        self.address = address
        self.ledger = ledger
        self.executor = executor
        self.reporter = reporter
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

    async def load(self, model_id: int, span: Span) -> None:
        model = self.ledger.models.get(model_id)
        if model is None:
            log.error("span [%d, %d) of unknown model %d: not loaded", span.start, span.end, model_id)
            return
        if (model_id, span) in self.loading:
            return  # asked twice (an event replayed at start-up, then the reconcile)
        self.loading.add((model_id, span))
        try:
            loaded = await self._fetch(model_id, model.manifest_cid, span)
        finally:
            self.loading.discard((model_id, span))
        if loaded is None:  # the assignment moved on while this one failed: to one loading, or not
            await self.ensure(model_id)
            return
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
            await self.reporter.confirm_shard(model_id)

    async def _fetch(self, model_id: int, manifest_cid: str, span: Span) -> LoadedSpan | None:
        """The span's blocks, loaded and verified; tried again after a failure while the chain
        still assigns this span to this node (None once it does not)."""
        delay = self.retry_first_s
        while True:
            try:
                return await asyncio.to_thread(self.executor.load, model_id, manifest_cid, span)
            except Exception as exc:  # noqa: BLE001 - a bad span must never end the event-follow task
                if not self._assigned(model_id, span):
                    log.error("could not load blocks [%d, %d) of model %d: %s", span.start, span.end, model_id, exc)
                    return None
                log.error(
                    "could not load blocks [%d, %d) of model %d: %s; trying again in %.0f s",
                    span.start,
                    span.end,
                    model_id,
                    exc,
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.retry_max_s)
            if not self._assigned(model_id, span):
                return None  # moved on while waiting: a load of the new span is under way
            if self.rejoin is not None:
                await self.rejoin()

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
