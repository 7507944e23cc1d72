"""The decode batcher (node.batching) in isolation: prefills go first, groups of generations
merge, and the batches it runs are counted for /health."""

from __future__ import annotations

from types import SimpleNamespace

from shardnet.protocol import Stage

ME = "0x" + "11" * 20


def test_a_spans_decode_steps_wait_for_its_prefills_in_worker_threads():
    """Prefills go first: a decode step on a span where a prefill runs in a worker thread waits
    for it to end (instead of blocking the event loop on the span's lock), and runs after."""
    import asyncio
    import time

    from node.executor import Executor

    executor = Executor(SimpleNamespace(), 1.0)  # type: ignore[arg-type]
    loaded = SimpleNamespace()
    events: list[str] = []

    def run_span(run: object, x: object, mask: object, measure: bool = True) -> str:
        events.append("prefill starts")
        time.sleep(0.3)
        events.append("prefill ends")
        return "hidden"

    def run_batch(batch: list[tuple[object, object]]) -> list[str]:
        events.append(f"decode of {len(batch)}")
        return ["token"] * len(batch)

    executor.run_span = run_span  # type: ignore[method-assign]
    executor.run_batch = run_batch  # type: ignore[method-assign]

    def run(job_id: int) -> SimpleNamespace:
        return SimpleNamespace(job_id=job_id, loaded=loaded, stage=0, stages=[Stage(ME, 0, 2, 1)], last_step=False)

    async def scenario() -> list[object]:
        prefill = asyncio.ensure_future(executor.run_pass(run(2), None, None))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # the prefill is in its thread
        step = executor.decoding.step(run(1), None, 250.0)  # type: ignore[arg-type]
        return list(await asyncio.gather(prefill, step))

    assert asyncio.run(scenario()) == ["hidden", "token"]
    assert events == ["prefill starts", "prefill ends", "decode of 1"]
    assert not executor.decoding.passes


def test_a_smaller_group_of_generations_waits_for_the_bigger_one_to_merge_with_it():
    """Decode steps of generations that drifted into two groups: the smaller group waits at a
    span for the bigger one's expected arrival (its steps' last end here plus their time away),
    within one of its own rounds; the bigger one waits no longer than a batch's time, so the two
    never wait for each other at once, and they merge."""
    import time

    from node.batching import Cadence, Waiting
    from node.executor import Executor

    executor = Executor(SimpleNamespace(), 1.0)  # type: ignore[arg-type]
    key = (1, 0)
    executor.decoding.last_ms[key] = 5.0  # the last batch here
    now = time.monotonic()

    def group(ids: range, ran_ago_s: float, away_s: float) -> None:
        for job_id in ids:  # each step comes every 60 ms; its last one ended here `ran_ago_s` ago
            executor.decoding.cadence[(key, job_id)] = Cadence(
                arrived=now - ran_ago_s - 0.03, interval=0.06, departed=now - ran_ago_s, away=away_s
            )

    def waiting(ids: range) -> None:
        executor.decoding.waiting[key] = [Waiting(SimpleNamespace(job_id=j), None, None) for j in ids]  # type: ignore[arg-type]
        for j in ids:
            executor.decoding.cadence[(key, j)].arrived = now  # (their steps are here now)

    group(range(1, 8), ran_ago_s=0.01, away_s=0.03)  # seven due back in 20 ms
    group(range(8, 9), ran_ago_s=0.03, away_s=0.03)
    waiting(range(8, 9))  # the one is here: it waits for the seven
    assert 0.020 <= executor.decoding.gather_s(key) <= 0.024

    group(range(1, 8), ran_ago_s=0.03, away_s=0.03)
    group(range(8, 9), ran_ago_s=0.01, away_s=0.03)  # the one is due back in 20 ms
    waiting(range(1, 8))  # the seven are here: they wait no longer than the last batch took
    assert executor.decoding.gather_s(key) == 0.005

    group(range(1, 8), ran_ago_s=0.001, away_s=0.5)  # the seven are far away: the one waits a round at most
    group(range(8, 9), ran_ago_s=0.03, away_s=0.03)
    waiting(range(8, 9))
    assert executor.decoding.gather_s(key) == 0.06

    executor.decoding.cadence.clear()  # four and four: the group without the lowest job id waits
    group(range(1, 9), ran_ago_s=0.03, away_s=0.03)
    group(range(1, 5), ran_ago_s=0.01, away_s=0.03)
    waiting(range(5, 9))
    assert executor.decoding.gather_s(key) > 0.02
    group(range(1, 9), ran_ago_s=0.03, away_s=0.03)
    group(range(5, 9), ran_ago_s=0.01, away_s=0.03)
    waiting(range(1, 5))
    assert executor.decoding.gather_s(key) == 0.005


def test_steps_waiting_together_run_as_one_batch_and_are_counted():
    """Two generations' decode steps queued on one span before its batch starts run as one batch
    (in job order); /health's decode_batches and batched_steps count it, and a step alone is not
    counted as a batch."""
    import asyncio

    from node.batching import DecodeBatcher

    batches: list[list[int]] = []

    def compute(steps: list[tuple[object, object]]) -> list[object]:
        batches.append([run.job_id for run, _ in steps])  # type: ignore[attr-defined]
        return [x for _, x in steps]

    decoding = DecodeBatcher(compute)
    loaded = SimpleNamespace()

    def run(job_id: int) -> SimpleNamespace:
        return SimpleNamespace(job_id=job_id, loaded=loaded, stage=0, stages=[Stage(ME, 0, 2, 1)], last_step=False)

    async def scenario() -> list[object]:
        decoding.passes[id(loaded)] = 1  # a prefill is running: the steps that come wait for it
        steps = [asyncio.ensure_future(decoding.step(run(j), f"x{j}", 250.0)) for j in (2, 1)]  # type: ignore[arg-type]
        await asyncio.sleep(0.01)
        assert not batches
        del decoding.passes[id(loaded)]
        decoding._passes_ended.pop(id(loaded)).set()
        outs = list(await asyncio.gather(*steps))
        decoding.cadence.clear()  # (the two are gone: the next step is alone on the span)
        outs.append(await decoding.step(run(3), "x3", 250.0))  # type: ignore[arg-type]
        return outs

    assert asyncio.run(scenario()) == ["x2", "x1", "x3"]
    assert batches == [[1, 2], [3]]
    assert (decoding.batches, decoding.batched_steps) == (1, 2)


def test_a_generations_last_step_on_a_span_stops_batches_waiting_for_it():
    """A generation whose last step on a span has run is no longer due there: the generations
    still going step on without waiting a gather window for it (at every stage, for the last of
    a group to end)."""
    import asyncio

    from node.batching import DecodeBatcher, key_of

    decoding = DecodeBatcher(lambda steps: [x for _, x in steps])
    loaded = SimpleNamespace()

    def run(job_id: int, last: bool = False) -> SimpleNamespace:
        return SimpleNamespace(job_id=job_id, loaded=loaded, stage=0, stages=[Stage(ME, 0, 2, 1)], last_step=last)

    key = key_of(run(1))  # type: ignore[arg-type]

    async def scenario() -> None:
        for job_id in (1, 2, 3):
            await decoding.step(run(job_id), "x", 250.0)  # type: ignore[arg-type]
        assert decoding.due(key) == 3
        await decoding.step(run(1, last=True), "x", 250.0)  # type: ignore[arg-type]
        assert decoding.due(key) == 2 and (key, 1) not in decoding.cadence
        await decoding.step(run(2), "x", 250.0)  # type: ignore[arg-type]
        assert decoding.due(key) == 2  # an ordinary step keeps its generation due
        decoding.forget(3)  # the job ended here before its last step (an end-of-sequence token)
        assert decoding.due(key) == 1

    asyncio.run(scenario())
