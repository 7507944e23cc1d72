"""The node's span management without a chain (node.spans.SpanManager): spans moved while jobs
still need them, loads that end out of order or after their assignment moved on, loads and
confirmations tried again, and stage 0 waiting for a span still loading (node.pipeline)."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from shardnet.events import Event
from shardnet.ledger import Ledger
from shardnet.protocol import JobStatus, Span, Stage
from tests.test_node_units import COORD, ME, OTHER, _block, event, posted, routed, stage


def test_spans_moved_twice_stay_loaded_while_jobs_routed_through_them_are_open():
    """A node moved twice in quick succession (the coordinator re-plans every few seconds)
    still runs a job routed through its first span; a retired span goes once no open job
    routed here needs it."""
    from node.executor import Executor
    from node.runs import LoadedSpan
    from node.spans import SpanManager

    def loaded(start: int, end: int) -> LoadedSpan:
        return LoadedSpan(1, SimpleNamespace(), Span(start, end), SimpleNamespace())  # type: ignore[arg-type]

    ledger, executor = Ledger(), Executor(SimpleNamespace(), 1.0)  # type: ignore[arg-type]
    spans = SpanManager(ME, ledger, executor, SimpleNamespace(), _spawn)  # type: ignore[arg-type]
    posted(ledger, 5)
    routed(ledger, 5, "JobRouted", stage(OTHER, 0, 2), stage(ME, 2, 4))
    first, second, third = loaded(2, 4), loaded(4, 6), loaded(0, 2)
    for span in (first, second, third):  # what Executor.load does once the blocks are loaded
        executor._retire(1)
        executor.spans[1] = span
        executor.prune_retired(1, spans.routed_here(1))
    assert executor._span_for(1, Stage(ME, 2, 4, 1)) is first
    assert executor._span_for(1, Stage(ME, 3, 4, 1)) is first  # entering part-way
    assert executor.retired[1] == [first]  # the second span no open job needs

    ledger.jobs[5].status = JobStatus.COMPLETED
    spans.unload(1)
    assert 1 not in executor.retired and 1 not in executor.spans


_spawned: list[Any] = []  # what a SpanManager under test ran in the background (loads tried again)


def _spawn(coro: Any) -> None:
    import asyncio

    _spawned.append(asyncio.ensure_future(coro))


async def _background_done() -> None:
    """Wait for the background work spawned so far, and what it spawns in turn."""
    import asyncio

    while pending := [t for t in _spawned if not t.done()]:
        await asyncio.gather(*pending)


def _span_manager(delay_s: Callable[[Span], float]) -> tuple[Ledger, Any, Any, list[Span], list[Span]]:
    """A SpanManager over model 1 whose loads take `delay_s(span)`: (ledger, executor, manager,
    spans loaded, spans confirmed), in the order they were."""
    import time

    from node.executor import Executor
    from node.runs import LoadedSpan
    from node.spans import SpanManager

    ledger = Ledger()
    registered = {"modelId": 1, "owner": OTHER, "name": "m", "manifestCid": "Qm", "blockCount": 8}
    registered |= {"pricePerBlock": 1, "blocksRoot": b"\0" * 32}
    ledger.apply(Event("ModelRegistered", registered, "0x" + "00" * 20, next(_block), "0x" + "00" * 32, 0))
    executor = Executor(SimpleNamespace(), 1.0)  # type: ignore[arg-type]
    loads: list[Span] = []
    confirmed: list[Span] = []

    def load(model_id: int, cid: str, span: Span) -> LoadedSpan:
        loads.append(span)
        time.sleep(delay_s(span))
        return LoadedSpan(model_id, SimpleNamespace(), span, SimpleNamespace())  # type: ignore[arg-type]

    async def confirm_shard(model_id: int) -> bool:
        confirmed.append(ledger.assignments[model_id][ME].span)
        return True

    executor.load = load  # type: ignore[method-assign]
    executor.pin = lambda model_id: 0  # type: ignore[method-assign]
    spans = SpanManager(ME, ledger, executor, SimpleNamespace(confirm_shard=confirm_shard), _spawn)  # type: ignore[arg-type]
    return ledger, executor, spans, loads, confirmed


def test_a_span_whose_assignment_moved_on_while_it_loaded_is_not_served():
    """Two assignments in quick succession start two loads; the newer one ends first. The older
    one, ending last, must neither replace the span the chain assigns now nor be confirmed."""
    import asyncio

    # the older assignment's blocks come last
    ledger, executor, spans, _, confirmed = _span_manager(lambda span: 0.3 if span == Span(2, 5) else 0.05)

    async def scenario() -> None:
        ledger.apply(event("ShardAssigned", modelId=1, node=ME, coordinator=COORD, start=2, end=5))
        older = asyncio.ensure_future(spans.load(1, Span(2, 5)))
        ledger.apply(event("ShardAssigned", modelId=1, node=ME, coordinator=COORD, start=0, end=2))
        await asyncio.gather(older, spans.load(1, Span(0, 2)))

    asyncio.run(scenario())
    assert executor.spans[1].span == Span(0, 2)
    assert confirmed == [Span(0, 2)]


def test_a_span_loaded_after_its_assignment_moved_on_loads_the_current_one_when_nobody_does():
    """A load ends after its assignment moved on to one no load was started for (its event acted
    on before a restart, say): the span the chain assigns now is loaded, served and confirmed."""
    import asyncio

    ledger, executor, spans, loads, confirmed = _span_manager(lambda span: 0.0)

    async def scenario() -> None:
        ledger.apply(event("ShardAssigned", modelId=1, node=ME, coordinator=COORD, start=2, end=5))
        stale = asyncio.ensure_future(spans.load(1, Span(2, 5)))
        ledger.apply(event("ShardAssigned", modelId=1, node=ME, coordinator=COORD, start=0, end=2))
        await stale

    asyncio.run(scenario())
    assert executor.spans[1].span == Span(0, 2)
    assert confirmed == [Span(0, 2)]
    assert loads == [Span(2, 5), Span(0, 2)]


def test_a_failed_load_is_tried_again_while_the_span_stays_assigned():
    """A load that fails (the node's IPFS daemon restarting, say) is tried again in the background
    (the event-follow task that started it goes on), rejoining the swarm first, until it
    succeeds: the span is then served and confirmed. Retries stop once the assignment moves on."""
    import asyncio

    ledger, executor, spans, loads, confirmed = _span_manager(lambda span: 0.0)
    succeed = executor.load
    failures = {Span(2, 5): 2, Span(0, 2): 0}
    rejoined: list[int] = []

    def flaky(model_id: int, cid: str, span: Span) -> Any:
        if failures.get(span, 10**6) > 0:
            failures[span] = failures.get(span, 10**6) - 1
            loads.append(span)
            raise ConnectionError("the IPFS daemon does not answer")
        return succeed(model_id, cid, span)

    async def rejoin() -> int:
        rejoined.append(1)
        return 0

    executor.load = flaky
    spans.rejoin, spans.retry_first_s = rejoin, 0.01

    async def two_failures() -> None:
        ledger.apply(event("ShardAssigned", modelId=1, node=ME, coordinator=COORD, start=2, end=5))
        await spans.load(1, Span(2, 5))  # returns after the first failure: the rest in the background
        assert loads == [Span(2, 5)] and 1 not in executor.spans
        await _background_done()

    asyncio.run(two_failures())
    assert loads == [Span(2, 5)] * 3 and len(rejoined) == 2
    assert executor.spans[1].span == Span(2, 5) and confirmed == [Span(2, 5)]

    loads.clear()
    failures[Span(4, 8)] = 10**6  # never loads

    async def moved_on_while_failing() -> None:
        ledger.apply(event("ShardAssigned", modelId=1, node=ME, coordinator=COORD, start=4, end=8))
        await spans.load(1, Span(4, 8))
        await asyncio.sleep(0.05)  # a few tries
        ledger.apply(event("ShardAssigned", modelId=1, node=ME, coordinator=COORD, start=0, end=2))
        await spans.load(1, Span(0, 2))  # what the agent does on the event
        await asyncio.wait_for(_background_done(), 5)  # the retries of the old span stop

    asyncio.run(moved_on_while_failing())
    assert loads[0] == Span(4, 8) and loads.count(Span(4, 8)) >= 2 and loads[-1] == Span(0, 2)
    assert executor.spans[1].span == Span(0, 2) and confirmed[-1] == Span(0, 2)


def test_a_refused_confirmation_is_sent_again_while_the_span_stays_unconfirmed():
    """confirmShard refused (the chain restarting, say) is sent again, backing off, until it
    goes through; a span moved on meanwhile is not confirmed any more."""
    import asyncio

    ledger, executor, spans, _, _ = _span_manager(lambda span: 0.0)
    answers = [False, False, True]
    sent: list[int] = []

    async def confirm_shard(model_id: int) -> bool:
        sent.append(model_id)
        return answers.pop(0)

    spans.reporter = SimpleNamespace(confirm_shard=confirm_shard)
    spans.retry_first_s = 0.01

    async def refused_twice() -> None:
        ledger.apply(event("ShardAssigned", modelId=1, node=ME, coordinator=COORD, start=2, end=5))
        await spans.load(1, Span(2, 5))

    asyncio.run(refused_twice())
    assert sent == [1, 1, 1] and executor.spans[1].span == Span(2, 5)

    sent.clear()

    async def refused_and_moved_on(model_id: int) -> bool:
        sent.append(model_id)
        ledger.apply(event("ShardAssigned", modelId=1, node=ME, coordinator=COORD, start=4, end=8))
        return False

    spans.reporter = SimpleNamespace(confirm_shard=refused_and_moved_on)

    async def moved_on() -> None:
        ledger.apply(event("ShardAssigned", modelId=1, node=ME, coordinator=COORD, start=0, end=2))
        await spans.load(1, Span(0, 2))

    asyncio.run(moved_on())
    assert sent == [1]  # not sent again for a span no longer assigned


def test_stage_0_waits_for_an_assigned_span_still_loading_and_not_for_one_never_assigned():
    """A node catching up after a restart meets jobs routed to it before its span is loaded
    again: stage 0 waits for the span the chain assigns it (and does not abort the job), but not
    for a model it holds no span of."""
    import asyncio

    from node.spans import span_loaded

    ledger = Ledger()
    ledger.apply(event("ShardAssigned", modelId=1, node=ME, coordinator=COORD, start=0, end=2))
    executor = SimpleNamespace(spans={})

    async def scenario() -> tuple[bool, bool, float]:
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, executor.spans.__setitem__, 1, object())  # the load ends
        started = loop.time()
        loaded = await span_loaded(ME, ledger, executor, 1)  # type: ignore[arg-type]
        waited = loop.time() - started
        return loaded, await span_loaded(ME, ledger, executor, 2), waited  # type: ignore[arg-type]

    loaded, unassigned, waited = asyncio.run(scenario())
    assert loaded and waited >= 0.25
    assert not unassigned
