"""Batched decode: the one-token steps of several generations on one span run as one batch
(per-job KV caches in shardnet.model.span), so concurrent jobs share the span's compute.

`DecodeBatcher` queues the steps per span and entry, decides how long a batch waits for the
span's other generations (each one's `Cadence`), and lets passes over several tokens (prefills,
forwards) in worker threads go first. The executor computes the batches (`Executor.run_batch`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from node.runs import JobRun

GATHER_MS = 30.0  # longest a decode batch waits for the span's other generations to arrive
GATHER_SLACK_MS = 2.0  # past a generation's expected arrival, how long a batch still waits for it
GONE_S = 30.0  # a generation whose steps stopped coming this long ago is forgotten

Key = tuple[int, int]  # a span (id of its LoadedSpan) and the block a stage enters it at
Step = tuple[JobRun, torch.Tensor]


@dataclass
class Cadence:
    """How one generation's decode steps come to one span and entry of this node (monotonic s)."""

    arrived: float  # its last step's arrival
    interval: float = float("inf")  # between its last two arrivals
    departed: float | None = None  # when its last step here ended
    away: float | None = None  # from a step's end here to the next step's arrival: the rest of the route

    def due(self, now: float) -> bool:
        """Whether its next step is due: its last one came less than 1.5 of its own step interval
        ago (one that ended, or stalled, stops counting after that)."""
        return now - self.arrived < (1.5 * self.interval if self.interval != float("inf") else 1.0)

    def expected(self) -> float | None:
        """When its next step should arrive: its last one's end here plus its time away, once
        measured (None while a step of it waits or runs here)."""
        if self.departed is None or self.away is None or self.departed < self.arrived:
            return None
        return self.departed + self.away


def is_decode_step(run: JobRun, x: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """A generation's one-token step after its prefill: what batched decode runs together."""
    return run.params.kind == "generate" and x.shape[:2] == (1, 1) and mask is None and run.session.seen > 0


def key_of(run: JobRun) -> Key:
    """The span and entry a job's steps at this node run on: steps batch only with the same key."""
    return (id(run.loaded), run.stages[run.stage].start)


@dataclass
class Waiting:
    """A decode step queued for the next batch on its key, and where its output goes."""

    run: JobRun
    x: torch.Tensor
    future: asyncio.Future[torch.Tensor]


@dataclass
class DecodeBatcher:
    """The decode queues of one executor. `compute` runs a batch of steps on one key (one step
    alone runs as a plain step)."""

    compute: Callable[[list[Step]], list[torch.Tensor]]
    decode_ms_total: float = 0.0  # time spent computing decode steps, batched or not
    batches: int = 0  # batches of more than one generation's decode step, and the steps they ran
    batched_steps: int = 0
    waiting: dict[Key, list[Waiting]] = field(default_factory=dict)
    last_ms: dict[Key, float] = field(default_factory=dict)  # per key: the last decode batch's time
    cadence: dict[tuple[Key, int], Cadence] = field(default_factory=dict)  # per key and job
    # per span (id of its LoadedSpan): passes over several tokens running in worker threads
    passes: dict[int, int] = field(default_factory=dict)
    _passes_ended: dict[int, asyncio.Event] = field(default_factory=dict)  # set when a span's last pass ends
    _draining: set[Key] = field(default_factory=set)
    _arrived: dict[Key, asyncio.Event] = field(default_factory=dict)  # set when a decode step is queued
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def step(self, run: JobRun, x: torch.Tensor, inline_ms: float) -> torch.Tensor:
        """Run a decode step, together with the decode steps of other generations on the same
        span that are waiting: while one batch computes, the steps that arrive queue up and go
        together as the next batch. Short steps run on the event loop (a thread handoff costs
        milliseconds of GIL switching per hop), longer ones in a worker thread. Once a
        generation's last step on this span has run (JobRun.last_step), no batch here waits for
        it (the last of a group to end would otherwise wait a gather window at every stage for
        generations that are over)."""
        key = key_of(run)
        now = time.monotonic()
        cadence = self.cadence.get((key, run.job_id))
        if cadence is None:
            self.cadence[(key, run.job_id)] = Cadence(now)
        else:
            if cadence.departed is not None:
                cadence.away = now - cadence.departed
            cadence.interval, cadence.arrived = now - cadence.arrived, now
        alone = key not in self._draining and self.due(key) <= 1 and key[0] not in self.passes
        if alone and self.last_ms.get(key, 0.0) <= inline_ms:
            return self._run(key, [(run, x)])[0]  # alone on this span: no batching machinery at all
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(key, []).append(Waiting(run, x, future))
        self._arrived.setdefault(key, asyncio.Event()).set()
        if key not in self._draining:
            self._draining.add(key)
            task = asyncio.create_task(self._drain(key, inline_ms))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    def forget(self, job_id: int) -> None:
        """A job ended here: batches stop waiting for its steps."""
        for entry in [c for c in self.cadence if c[1] == job_id]:
            del self.cadence[entry]

    async def run_pass(self, span: int, work: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Run a pass over several tokens (a prefill, a forward) on `span` in a worker thread. The
        span's decode steps wait for it to end rather than block the event loop on the span's
        lock: prefills go first, so the generations they start join the decode batch from their
        first step, where steps run in between would put the earlier jobs' tokens ahead and
        leave them to finish alone at the end."""
        self.passes[span] = self.passes.get(span, 0) + 1
        try:
            return await asyncio.to_thread(work)
        finally:
            self.passes[span] -= 1
            if not self.passes[span]:
                del self.passes[span]
                ended = self._passes_ended.pop(span, None)
                if ended is not None:
                    ended.set()

    async def _after_passes(self, span: int) -> None:
        while span in self.passes:
            await self._passes_ended.setdefault(span, asyncio.Event()).wait()

    async def _drain(self, key: Key, inline_ms: float) -> None:
        try:
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(0)  # let messages already received queue their steps first
                if not self.waiting.get(key):
                    return
                # wait for the span's other generations: a bigger batch costs little more than a
                # small one, so jobs that drifted into separate groups merge into one and then
                # step in lock-step
                deadline = loop.time() + self.gather_s(key)
                arrived = self._arrived.setdefault(key, asyncio.Event())
                while len(self.waiting[key]) < self.due(key) and loop.time() < deadline:
                    arrived.clear()
                    try:
                        await asyncio.wait_for(arrived.wait(), deadline - loop.time())
                    except TimeoutError:
                        break
                await self._after_passes(key[0])  # (the steps that arrive meanwhile join this batch)
                # in job order, not arrival order: the same jobs stepping again then find their
                # padded cache in place (shardnet.model.span), where a new order re-pads every row
                batch = sorted(self.waiting.pop(key), key=lambda waiting: waiting.run.job_id)
                steps = [(w.run, w.x) for w in batch]
                try:
                    if self.last_ms.get(key, 0.0) <= inline_ms:  # short: on the event loop, no thread handoff
                        outs = self._run(key, steps)
                    else:
                        outs = await asyncio.to_thread(self._run, key, steps)
                except Exception as exc:  # noqa: BLE001 - each waiting step gets the failure
                    for w in batch:
                        if not w.future.done():
                            w.future.set_exception(exc)
                    continue
                for w, out in zip(batch, outs, strict=True):
                    if not w.future.done():
                        w.future.set_result(out)
        finally:
            self._draining.discard(key)

    def _run(self, key: Key, steps: list[Step]) -> list[torch.Tensor]:
        """Compute a batch, and keep its time and each of its generations' departure."""
        started = time.perf_counter()
        outs = self.compute(steps)
        self.last_ms[key] = ms = (time.perf_counter() - started) * 1000
        self.decode_ms_total += ms
        if len(steps) > 1:
            self.batches += 1
            self.batched_steps += len(steps)
        departed = time.monotonic()
        for run, _ in steps:
            if run.last_step:  # (still as before this step: the run's logs grow once its result is sent on)
                self.cadence.pop((key, run.job_id), None)
                continue
            cadence = self.cadence.get((key, run.job_id))
            if cadence is not None:
                cadence.departed = departed
        return outs

    def gather_s(self, key: Key) -> float:
        """How long the batch waiting on `key` waits for the span's other due generations. At
        most one batch's time (the last one's, and never past GATHER_MS); but a group smaller than
        the due ones missing (a tie goes by the lowest job id) waits until the last of them is
        expected (Cadence.expected, and GATHER_SLACK_MS), within one of its own rounds. Groups
        that drifted apart reach each stage in turn, one coming back from the rest of the route
        while the other runs here: a wait of one batch's time let them miss each other at every
        stage, so every round cost two batches at each stage; where both wait for the other, each
        waits in vain while the other does. The smaller group waits, the other goes on, and the
        two merge at the next stage."""
        now = time.monotonic()
        waiting = [w.run.job_id for w in self.waiting.get(key, [])]
        missing = [
            (job_id, cadence)
            for (k, job_id), cadence in self.cadence.items()
            if k == key and job_id not in waiting and cadence.due(now)
        ]
        wait_ms = min(GATHER_MS, self.last_ms.get(key, 0.0))
        smaller = len(waiting) < len(missing) or (
            len(waiting) == len(missing) and min(waiting, default=0) > min(job_id for job_id, _ in missing)
        )
        if waiting and missing and smaller:
            expected = [c.expected() for _, c in missing]
            rounds = [self.cadence[(key, job_id)].interval for job_id in waiting if (key, job_id) in self.cadence]
            if None not in expected and rounds:
                last = max(e for e in expected if e is not None)
                wait_ms = max(wait_ms, min((last - now) * 1000 + GATHER_SLACK_MS, min(rounds) * 1000))
        return wait_ms / 1000

    def due(self, key: Key) -> int:
        """Generations whose next decode step on this span and entry is due (Cadence.due)."""
        now = time.monotonic()
        due = 0
        for (k, job_id), cadence in list(self.cadence.items()):
            if now - cadence.arrived > GONE_S:
                del self.cadence[(k, job_id)]
            elif k == key and cadence.due(now):
                due += 1
        return due
