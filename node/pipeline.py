"""The stage pipeline: how a job moves through this node. Stage 0 reads the input and runs
first; every other stage accepts activations only from the previous stage of the job's
on-chain route (over an encrypted link, node.link), runs its span and sends the result on;
the last stage samples tokens and loops them back to stage 0, or hands the output to
settlement. When the next stage dies, the coordinator reroutes and this stage replays what it
sent, so the replacement rebuilds its KV cache (Petals' trick).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import torch

from node.batching import is_decode_step
from node.executor import Executor
from node.filter import my_stage
from node.link import LinkClient, Peer, Verdict
from node.messages import pack, unpack
from node.metrics import NodeMetrics
from node.misbehave import corrupt_activation, corrupt_token
from node.privacy import JobKeys
from node.runs import JobRun
from node.settings import NodeSettings
from node.settlement import JOB_KEY_WAIT_S, Settlement
from node.spans import span_loaded
from shardnet.errors import JobInputError, PeerError, ShardnetError, StorageError
from shardnet.jobs import JobParams
from shardnet.ledger import Ledger
from shardnet.model.quant import decode_activation, encode_activation
from shardnet.protocol import JobStatus
from shardnet.storage import IpfsClient

# Steps expected to take at most this long run on the event loop itself (a pass over many
# tokens only while no other job is running here). Handing a step to a worker thread and back
# costs milliseconds of GIL handoff per hop (Python's switch interval is 5 ms), and a pass
# computed in a thread runs slower than on the loop (the two threads trade the GIL between
# torch's ops: GPT-2-small's last span over 128 tokens took 281-338 ms in a thread against
# 266-274 ms on the loop). Longer steps still go to a thread, so the data plane and health
# probes keep answering: a link's ack waits at most this long, well inside the coordinator's
# 1 s health probe (a node is taken for down after two missed probes).
INLINE_STEP_MS = 500.0
# How long a message may wait for its job's JobRouted event (which arrives ~10 ms after the block).
ROUTE_WAIT_S = 3.0
PREFETCH_JOBS = 64  # posted jobs whose inputs a first-block node reads ahead of their routing
log = logging.getLogger("shardnet.node")
Spawn = Callable[[Coroutine[Any, Any, None]], None]
# a stage message: its header, its payload, the whole of it, whether it came over a link, and
# its link frame's timing (count_hop)
Message = tuple[dict[str, Any], bytes, bytes, bool, Any]


class StagePipeline:
    def __init__(
        self,
        address: str,
        settings: NodeSettings,
        ledger: Ledger,
        executor: Executor,
        ipfs: IpfsClient,
        links: LinkClient,
        settlement: Settlement,
        job_keys: JobKeys,
        metrics: NodeMetrics,
        spawn: Spawn,
    ):
        self.address = address
        self.settings = settings
        self.ledger = ledger
        self.executor = executor
        self.ipfs = ipfs
        self.links = links
        self.job_keys = job_keys
        self.settlement = settlement
        self.metrics = metrics
        self.spawn = spawn
        self.queues: dict[int, asyncio.Queue[Message]] = {}
        self._routed: dict[int, asyncio.Event] = {}  # jobs a message is waiting on the route of
        self._inputs: OrderedDict[int, asyncio.Task[bytes]] = OrderedDict()  # job -> its input, read ahead

    # ------------------------------------------------------------------ routes and lifetimes
    def route_known(self, job_id: int) -> None:
        """The agent applied a JobRouted / JobRerouted event: wake messages waiting for it."""
        waiting = self._routed.pop(job_id, None)
        if waiting is not None:
            waiting.set()

    def drop(self, job_id: int) -> None:
        self.settlement.finish(job_id)
        self.queues.pop(job_id, None)

    async def claim_aborted(self, job_id: int) -> None:
        """The job was aborted after this stage may have done its part: claim it, then forget it."""
        self.queues.pop(job_id, None)
        await self.settlement.claim_aborted(job_id)

    def begin(self, job_id: int) -> JobRun:
        """This node's state for a job, created on its first message (params decoded once, here)."""
        run = self.executor.jobs.get(job_id)
        if run is None:
            job = self.ledger.jobs[job_id]
            stage = my_stage(self.address, job.route)
            if stage is None:
                raise JobInputError(f"this node is not on the route of job {job_id}")
            params = JobParams.decode(job.params)
            run = self.executor.begin(job_id, job.model_id, stage, list(job.route), job.coordinator or "", params)
            self.metrics.open_jobs.inc()
            self.spawn(self.settlement.claim_when_overdue(job_id))
        return run

    # ------------------------------------------------------------------ stage 0
    def prefetch_input(self, job_id: int) -> None:
        """A job was posted on a model whose first block this node holds: it may be routed here as
        stage 0, so read its input now (the IPFS read then overlaps the routing; at most
        PREFETCH_JOBS inputs are held, and a job routed elsewhere just lets its read go)."""
        job = self.ledger.jobs.get(job_id)
        loaded = self.executor.spans.get(job.model_id) if job is not None else None
        if job is None or loaded is None or loaded.span.start != 0 or job_id in self._inputs:
            return
        task = asyncio.ensure_future(asyncio.to_thread(self.ipfs.cat, job.input_cid, self.settings.ipfs_timeout_s))
        task.add_done_callback(lambda t: t.cancelled() or t.exception())  # a failed read is read again at pickup
        self._inputs[job_id] = task
        while len(self._inputs) > PREFETCH_JOBS:
            self._inputs.popitem(last=False)

    async def _read_input(self, job_id: int, input_cid: str) -> bytes:
        """The job's input: the read begun when it was posted, if any and it worked, else a new one."""
        task = self._inputs.pop(job_id, None)
        if task is not None:
            try:
                return await task
            except ShardnetError:
                pass  # read it again below, for the error to name
        return await asyncio.to_thread(self.ipfs.cat, input_cid, self.settings.ipfs_timeout_s)

    async def start_job(self, job_id: int, picked_up_at: float) -> None:
        job = self.ledger.jobs[job_id]
        if not await span_loaded(self.address, self.ledger, self.executor, job.model_id):
            await self.settlement.abort(job_id, f"stage 0 does not hold model {job.model_id}")
            return
        try:
            run = self.begin(job_id)
            raw = await self._read_input(job_id, job.input_cid)
            key = await self.job_keys.wait_for(job_id, JOB_KEY_WAIT_S) if run.params.private else None
            ids, mask = self.executor.first_input(run, raw, key)
        except JobInputError as exc:
            await self.settlement.abort(job_id, str(exc))
            return
        except StorageError as exc:
            await self.settlement.abort(job_id, f"input {job.input_cid} could not be read from IPFS: {exc}")
            return
        too_long = context_overflow(run, ids.shape[1])
        if too_long:
            await self.settlement.abort(job_id, too_long)
            return
        run.attention_mask = mask
        run.prompt_len = ids.shape[1]
        run.timing = {"picked_up_at": picked_up_at, "t0": time.time()}
        try:
            await self.step(run, ids, mask)
        except (ShardnetError, RuntimeError, IndexError, ValueError) as exc:  # e.g. longer than the model's context
            log.warning("job %d: stage 0 could not run its input: %s", job_id, exc, extra={"job": job_id})
            await self.settlement.abort(job_id, f"stage 0 could not run the input: {type(exc).__name__}: {exc}")

    # ------------------------------------------------------------------ every stage
    async def step(self, run: JobRun, x: torch.Tensor, mask: torch.Tensor | None, hop: Any = None) -> None:
        """Run this stage's span on `x` and pass the result on. `hop`: the timing of the link
        frame `x` came in (count_hop)."""
        started = time.perf_counter()
        if run.is_last and run.last_step:
            await self.settlement.collect_early(run)  # this step is the last: the receipts come meanwhile
        if is_decode_step(run, x, mask):  # batched with other generations' steps when they wait
            out = await self.executor.decoding.step(run, x, INLINE_STEP_MS)
        elif self.executor.step_estimate_ms(run, x) <= INLINE_STEP_MS and (
            x.shape[1] == 1 or len(self.executor.jobs) == 1
        ):
            # a short step: no thread handoff (a pass over many tokens only when no other job is
            # here: in a thread, it lets the other jobs' decode steps go on meanwhile)
            out = self.executor.run_span(run, x, mask)
        else:
            out = await self.executor.run_pass(run, x, mask)
        elapsed = time.perf_counter() - started
        count_hop(run, hop)
        try:
            await self._pass_on(run, x, mask, out)
        finally:  # counted once the result is on its way: a decode step's send goes first
            self.metrics.stage_seconds.labels(run.params.kind).observe(elapsed)

    async def _pass_on(self, run: JobRun, x: torch.Tensor, mask: torch.Tensor | None, out: torch.Tensor) -> None:
        """Send a step's result on: to the next stage, or (last stage) the next token round to
        stage 0, or the output to settlement."""
        if self.settings.misbehave:
            out = corrupt_activation(self.settings.misbehave, x, out)
        if not run.is_last:
            header: dict[str, Any] = {"kind": "act", "step": run.step, "timing": run.timing}
            if mask is not None:
                header["mask"] = mask.tolist()
            body = pack(header, encode_activation(out, run.params.wire))
            run.emit(body)
            run.step += 1
            if not run.stalled and not run.replaying:  # else the replay to the next stage carries it
                # a generation's next step here follows the next stage's answer anyway: no wait for the ack
                await self.send(run, run.stage + 1, body, wait=run.params.kind != "generate" or run.all_sent)
            self.settlement.prepublish(run)
            return
        if run.params.kind == "generate":
            token, done = self.executor.next_token(run, out)
            if self.settings.misbehave:
                token = run.tokens[-1] = corrupt_token(self.settings.misbehave, token, out.shape[-1])
            run.ended = done
            run.progress.set()  # the client's token stream, if it listens, sends it now
            if not done:
                header = {"kind": "tokens", "step": run.step, "ids": [token]}
                body = pack(header)
                run.step += 1
                if run.is_first:  # a one-stage route: the token comes round through this stage's own queue
                    self._enqueue(run.job_id, header, b"", body, linked=False)
                else:
                    await self.send(run, 0, body, wait=False)
                return
            await self.settlement.finalize(run, None)
            return
        await self.settlement.finalize(run, out)

    async def send(self, run: JobRun, stage: int, body: bytes, wait: bool = True, fresh: bool = True) -> None:
        """Send a message to a stage of the job's route: until that stage queued it, or (not
        `wait`) only until it is written; a failure is then handled the same way once known.
        `fresh`: the result of the step just computed, so its frame carries the hop's timing
        (not a replay)."""
        node = run.stages[stage].node
        peer = Peer(node, self.ledger.endpoints[node], self.ledger.data_keys.get(node, b""))
        timing = {"sent": run.computed[1], "hops": run.hops[0], "hop_ms": run.hops[1]} if fresh else None
        if not wait:
            task = await self.links.post(peer, run.job_id, stage, body, timing)
            task.add_done_callback(functools.partial(self._answered, run, stage, node, len(body)))
            return
        try:
            await self.links.send(peer, run.job_id, stage, body, timing)
        except PeerError as exc:
            await self._unreachable(run, stage, node, exc)
            return
        self.metrics.bytes_out.inc(len(body))

    def _answered(self, run: JobRun, stage: int, node: str, size: int, task: asyncio.Task[None]) -> None:
        """The answer to a message sent without waiting for it."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            self.metrics.bytes_out.inc(size)
        elif isinstance(exc, PeerError):
            self.spawn(self._unreachable(run, stage, node, exc))
        else:
            log.error("job %d: sending to stage %d failed: %r", run.job_id, stage, exc, extra={"job": run.job_id})

    async def _unreachable(self, run: JobRun, stage: int, node: str, exc: PeerError) -> None:
        log.error("job %d: stage %d unreachable: %s", run.job_id, stage, exc, extra={"job": run.job_id})
        if run.stages[stage].node != node:
            return  # rerouted meanwhile: the replay to the replacement carries this message
        if stage == run.stage + 1:
            # the coordinator replaces a dead stage (rerouteJob); replay to the replacement then
            run.stalled = True
            self.spawn(self._await_reroute(run, node))
        else:
            await self.settlement.abort(run.job_id, f"stage {stage} ({node}) unreachable: {exc}")

    async def _await_reroute(self, run: JobRun, dead: str) -> None:
        await asyncio.sleep(self.settings.reroute_wait_s)
        if run.stalled and self.executor.jobs.get(run.job_id) is run and run.stages[run.stage + 1].node == dead:
            await self.settlement.abort(
                run.job_id,
                f"stage {run.stage + 1} ({dead}) unreachable and not replaced within "
                f"{self.settings.reroute_wait_s:.0f} s",
            )

    async def rerouted(self, job_id: int) -> None:
        """The route changed under a running job: adopt it, and if the next stage is new, replay
        everything this stage sent so the replacement rebuilds its KV cache (Petals' trick)."""
        run = self.executor.jobs.get(job_id)
        job = self.ledger.jobs[job_id]
        stage = my_stage(self.address, job.route)
        if run is None or stage is None:
            return
        old_next = run.stages[run.stage + 1].node if not run.is_last else None
        run.stages, run.coordinator, run.stage = list(job.route), job.coordinator or "", stage
        if run.is_last or run.stages[run.stage + 1].node == old_next and not run.stalled:
            return
        log.info(
            "job %d: replaying %d messages to the new stage %d",
            run.job_id,
            len(run.sent_log),
            run.stage + 1,
            extra={"job": run.job_id},
        )
        # messages this stage makes meanwhile (its previous stage may still be feeding it) join
        # sent_log and go out behind the replay, never ahead of it
        run.stalled, run.replaying = False, True
        try:
            sent = 0
            while sent < len(run.sent_log):
                await self.send(run, run.stage + 1, run.sent_log[sent], fresh=False)
                sent += 1
                if run.stalled:
                    return
        finally:
            run.replaying = False

    # ------------------------------------------------------------------ incoming messages
    async def wait_for_route(self, job_id: int) -> bool:
        """True once the job's route is known here (the chain event may reach a peer first)."""
        job = self.ledger.jobs.get(job_id)
        if job is not None and job.route:
            return True
        waiting = self._routed.setdefault(job_id, asyncio.Event())
        try:
            await asyncio.wait_for(waiting.wait(), ROUTE_WAIT_S)
        except TimeoutError:
            return False
        finally:
            if not waiting.is_set():
                self._routed.pop(job_id, None)
        job = self.ledger.jobs.get(job_id)
        return job is not None and bool(job.route)

    def accept(
        self, job_id: int, stage: int, sender: str, body: bytes, hop: Any = None
    ) -> Verdict | Awaitable[Verdict]:
        """A data-plane message arrived: accept it only from the stage the on-chain route names.
        Decided here and now when the route allows it (a decode step's usual case); else the
        verdict comes once this node's view of the route has had a moment to catch up. `hop`:
        its frame's timing (count_hop)."""
        try:
            header, payload = unpack(body)
        except ValueError as exc:
            return False, f"malformed message: {exc}"
        job = self.ledger.jobs.get(job_id)
        if job is None or not job.route or self._refusal(job_id, stage, sender, header) is not None:
            return self._accept_later(job_id, stage, sender, header, payload, body, hop)
        self._enqueue(job_id, header, payload, body, hop=hop)
        return True, ""

    async def _accept_later(
        self, job_id: int, stage: int, sender: str, header: dict[str, Any], payload: bytes, body: bytes, hop: Any
    ) -> Verdict:
        if not await self.wait_for_route(job_id):
            return False, f"job {job_id} has no route on-chain"
        # a reroute may reach the sender first: wait a moment for this node's view to catch up
        deadline = time.monotonic() + ROUTE_WAIT_S
        while (reason := self._refusal(job_id, stage, sender, header)) is not None:
            if self.ledger.jobs[job_id].status != JobStatus.ROUTED or time.monotonic() >= deadline:
                return False, reason
            waiting = self._routed.setdefault(job_id, asyncio.Event())
            try:
                await asyncio.wait_for(waiting.wait(), deadline - time.monotonic())
            except TimeoutError:
                pass
        self._enqueue(job_id, header, payload, body, hop=hop)
        return True, ""

    def _enqueue(
        self, job_id: int, header: dict[str, Any], payload: bytes, body: bytes, linked: bool = True, hop: Any = None
    ) -> None:
        queue = self.queues.get(job_id)
        if queue is None:
            queue = self.queues[job_id] = asyncio.Queue()
            self.spawn(self._worker(job_id, queue))
        queue.put_nowait((header, payload, body, linked, hop))

    def _refusal(self, job_id: int, stage: int, sender: str, header: dict[str, Any]) -> str | None:
        """Why this node does not take the message, as the job's route stands here now."""
        job = self.ledger.jobs[job_id]
        if job.status != JobStatus.ROUTED:
            return f"job {job_id} is {job.status.name.lower()}, not routed"
        if my_stage(self.address, job.route) != stage:
            return f"this node is not stage {stage} of job {job_id}"
        expected = (
            job.route[-1].node if header.get("kind") == "tokens" else job.route[stage - 1].node if stage else None
        )
        if expected is None or sender != expected:
            return f"job {job_id} stage {stage} takes messages only from {expected}"
        return None

    async def _worker(self, job_id: int, queue: asyncio.Queue[Message]) -> None:
        while True:
            header, payload, body, linked, hop = await queue.get()
            try:
                run = self.begin(job_id)
                if header["step"] < run.expected_step:
                    continue  # a replay (after failover, or resent by anyone): already processed here
                run.expected_step = header["step"] + 1
                run.receive(body)
                if header["kind"] == "tokens":
                    await self.step(run, torch.tensor([header["ids"]]), None, hop)
                else:
                    mask = torch.tensor(header["mask"]) if "mask" in header else None
                    run.timing = header.get("timing", run.timing)
                    await self.step(run, decode_activation(payload), mask, hop)
            except Exception as exc:
                log.exception("job %d failed at this stage", job_id, extra={"job": job_id})
                await self.settlement.abort(job_id, f"stage failed: {type(exc).__name__}: {exc}")
                return
            finally:  # counted after the step: off a decode step's path
                if linked:
                    self.metrics.bytes_in.inc(len(body))
            if job_id not in self.executor.jobs:
                return


def count_hop(run: JobRun, hop: Any) -> None:
    """Count the hop a step's input made into `run.hops`. `hop` is the timing its link frame
    carried: when the sending stage's model call ended (`sent`, unix s) and the hops counted
    before it (`hops`, `hop_ms`). This hop runs from `sent` to the start of this stage's model
    call: the message's whole trip, both ends' per-step work outside the model (sampling,
    encoding, sealing, framing; parsing, opening, checking, queueing, decoding), the network and
    any wait for a decode batch. `sent` is the other node's clock, so across hosts a hop also
    holds the two clocks' offset. It rides in the frame's header, not in the stage message, which
    receipts hash and a replay must repeat byte for byte. A frame without it (a replay, a stage's
    own token loop) counts nothing, and a peer's junk is ignored."""
    if not isinstance(hop, dict) or not run.computed[0]:
        return
    sent, hops, total = hop.get("sent"), hop.get("hops"), hop.get("hop_ms")
    if not isinstance(sent, float):
        return
    if not isinstance(hops, int) or isinstance(hops, bool) or not isinstance(total, float):
        hops, total = 0, 0.0
    run.hops = (hops + 1, total + (run.computed[0] - sent) * 1000)


def context_overflow(run: JobRun, prompt_len: int) -> str | None:
    """Why the job cannot fit the model's context (positions for the prompt and, for a
    generation, every fed-back token but the last), or None."""
    limit = getattr(run.loaded.manifest.config, "max_position_embeddings", None)
    generate = run.params.kind == "generate"
    need = prompt_len + (run.params.max_new_tokens - 1 if generate else 0)
    if not isinstance(limit, int) or need <= limit:
        return None
    if generate:
        fits = max(0, limit - prompt_len + 1)
        return (
            f"the prompt's {prompt_len} tokens plus max_new_tokens {run.params.max_new_tokens} exceed the model's "
            f"context of {limit} positions; shorten the prompt or lower max_new_tokens to {fits}"
        )
    return f"the input's {prompt_len} tokens exceed the model's context of {limit} positions; shorten it"
