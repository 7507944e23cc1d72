"""Executor: the spans this node serves, and the per-job state (node.runs) of every job it is
running: its steps, batched decode, and its output.

Loading a span fetches exactly its blocks from IPFS and verifies them (shardnet.model.shards).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import torch

from node.inputs import decode_images, parse_input, sample_next
from node.runs import JobRun, LoadedSpan
from shardnet.errors import JobInputError
from shardnet.jobs import JobParams
from shardnet.model.manifest import Manifest, fetch_manifest, fetch_processor, fetch_tokenizer
from shardnet.model.shards import fetch_span, span_cids
from shardnet.model.span import Session, SpanModel
from shardnet.protocol import Span, Stage
from shardnet.sealing import SealError, decrypt
from shardnet.storage import IpfsClient

GATHER_MS = 30.0  # longest a decode batch waits for the span's other generations to arrive
GATHER_SLACK_MS = 2.0  # past a generation's expected arrival, how long a batch still waits for it


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


class Executor:
    def __init__(self, ipfs: IpfsClient, ipfs_timeout_s: float, slowdown: float = 1.0):
        self.ipfs = ipfs
        self.ipfs_timeout_s = ipfs_timeout_s
        self.spans: dict[int, LoadedSpan] = {}  # model id -> the span this node serves now
        self.jobs: dict[int, JobRun] = {}
        # per model, spans served before a move that jobs routed before it may still need
        self.retired: dict[int, list[LoadedSpan]] = {}
        self.slowdown = slowdown
        self.ms_per_block: float | None = None  # measured: moving average of compute per block per call
        self.ms_per_block_token: float | None = None  # the same per token, from passes over several tokens
        self.calls = 0
        self.batches = 0  # decode batches of more than one generation, and the steps they ran
        self.batched_steps = 0
        self.decode_ms_total = 0.0  # time spent computing decode steps, batched or not
        self._waiting: dict[tuple[int, int], list[tuple[JobRun, torch.Tensor, asyncio.Future[torch.Tensor]]]] = {}
        self._draining: set[tuple[int, int]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._arrived: dict[tuple[int, int], asyncio.Event] = {}  # set when a decode step is queued
        self._decode_ms: dict[tuple[int, int], float] = {}  # per span and entry: last decode batch's time
        # per (span and entry, job): how its decode steps come (arrivals, interval, time away)
        self._cadence: dict[tuple[tuple[int, int], int], Cadence] = {}
        # per span (id of its LoadedSpan): passes over several tokens running in worker threads,
        # and an event set when the last one ends
        self._passes: dict[int, int] = {}
        self._passes_ended: dict[int, asyncio.Event] = {}

    # ------------------------------------------------------------------ spans
    def load(self, model_id: int, manifest_cid: str, span: Span) -> LoadedSpan:
        """Fetch, verify and load the blocks of `span` (and the tokenizer at the ends). It is not
        served until `serve` makes it so (a span loaded to check another node's stage never is)."""
        manifest = fetch_manifest(self.ipfs, manifest_cid, timeout=self.ipfs_timeout_s)
        blocks = fetch_span(self.ipfs, manifest, span, timeout=self.ipfs_timeout_s)
        model = SpanModel(manifest.new_config(), span, blocks, manifest.data.get("pooling"))
        tokenizer = processor = None
        if manifest.data.get("tokenizer") and (model.has_embed or model.has_final):
            tokenizer = self._tokenizer(manifest)
        if manifest.data.get("processor") and model.has_embed:
            processor = fetch_processor(self.ipfs, manifest, self.ipfs_timeout_s)
        return LoadedSpan(model_id, manifest, span, model, tokenizer, processor)

    def serve(self, loaded: LoadedSpan) -> None:
        """Make `loaded` the span this node serves for its model (the one it replaces is retired)."""
        self._retire(loaded.model_id)
        self.spans[loaded.model_id] = loaded

    def pin(self, model_id: int) -> int:
        """Pin on this node's IPFS daemon everything the served span of `model_id` was loaded
        from, so the daemon keeps it and serves it onward to peers; returns how many CIDs."""
        loaded = self.spans[model_id]
        cids = span_cids(loaded.manifest, loaded.span)
        for cid in cids:
            self.ipfs.pin(cid, timeout=self.ipfs_timeout_s)
        return len(cids)

    def _retire(self, model_id: int) -> None:
        """Keep the span being replaced for routes planned before the move: a job routed through
        the old span may reach this node after the new one is loaded. `prune_retired` lets it go
        once no open job needs it."""
        old = self.spans.pop(model_id, None)
        if old is not None:
            self.retired.setdefault(model_id, []).append(old)

    def prune_retired(self, model_id: int, needed: set[tuple[int, int]]) -> None:
        """Drop the retired spans of `model_id` that no open job routed here still needs:
        `needed` holds the (start, end) of every such job's stage on this node."""

        def serves_any(loaded: LoadedSpan) -> bool:
            return any(loaded.span.start <= start < end == loaded.span.end for start, end in needed)

        kept = [loaded for loaded in self.retired.get(model_id, []) if serves_any(loaded)]
        if kept:
            self.retired[model_id] = kept
        else:
            self.retired.pop(model_id, None)

    def _tokenizer(self, manifest: Manifest) -> Any:
        return fetch_tokenizer(self.ipfs, manifest, self.ipfs_timeout_s)

    def unload(self, model_id: int) -> None:
        self._retire(model_id)

    def _span_for(self, model_id: int, stage: Stage) -> LoadedSpan:
        """The loaded span a job's stage runs on: the current one, or one a running job still
        holds after a reassignment (routes planned before a move keep their spans). A stage
        may enter a span part-way: [stage.start, span end)."""

        def serves(loaded: LoadedSpan | None) -> bool:
            return (
                loaded is not None
                and loaded.model_id == model_id
                and (loaded.span.start <= stage.start < stage.end == loaded.span.end)
            )

        current = self.spans.get(model_id)
        if serves(current):
            assert current is not None
            return current
        for loaded in (*self.retired.get(model_id, []), *(run.loaded for run in self.jobs.values())):
            if serves(loaded):
                assert loaded is not None
                return loaded
        if current is None:
            raise JobInputError(f"this node no longer serves model {model_id}")
        return current

    # ------------------------------------------------------------------ jobs
    def begin(
        self, job_id: int, model_id: int, stage: int, stages: list[Stage], coordinator: str, params: JobParams
    ) -> JobRun:
        loaded = self._span_for(model_id, stages[stage])
        run = JobRun(
            job_id,
            model_id,
            stage,
            stages,
            coordinator,
            params,
            loaded.model.new_session() if params.kind == "generate" else Session(),
            loaded=loaded,
        )
        if params.kind == "generate":
            run.generator = torch.Generator().manual_seed(params.seed)
        self.jobs[job_id] = run
        return run

    def end(self, job_id: int) -> bool:
        """Drop a job's state here, its rows in the span's kept batch caches included; False if
        the job was not running here."""
        run = self.jobs.pop(job_id, None)
        if run is None:
            return False
        run.loaded.model.release(run.session)
        for cadence in [c for c in self._cadence if c[1] == job_id]:
            del self._cadence[cadence]  # no more steps: batches stop waiting for it
        return True

    def first_input(
        self, run: JobRun, raw: bytes, job_key: bytes | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Stage 0: validate the job input (a private job's opened with its key), tokenize.
        -> (ids [b, n], attention mask or None). The transcript keeps `raw`, as IPFS holds it."""
        loaded = run.loaded
        model = loaded.model
        kind = run.params.kind
        if kind == "generate" and not model.is_decoder:
            raise JobInputError(
                f"model {run.model_id} ({model.model_type}) cannot generate; use kind "
                + ("'classify'" if model.kind == "image_classifier" else "'embed' or 'forward'")
            )
        if kind == "embed" and model.kind != "encoder":
            raise JobInputError(f"model {run.model_id} ({model.model_type}) does not make sentence embeddings")
        if (kind == "classify") != (model.kind == "image_classifier"):
            raise JobInputError(
                f"model {run.model_id} ({model.model_type}) classifies images: use kind 'classify'"
                if kind != "classify"
                else f"model {run.model_id} ({model.model_type}) does not classify images"
            )
        plain = raw
        if run.params.private:
            if job_key is None:
                raise JobInputError(f"job {run.job_id} is private and its client has not handed over the job key")
            try:
                plain = decrypt(job_key, raw, "input")
            except SealError as exc:
                raise JobInputError(f"the private job's input: {exc}") from None
        data = parse_input(run.params, plain)
        run.receive(raw)
        if kind == "classify":
            if loaded.processor is None:
                raise JobInputError(f"model {run.model_id} has no image processor config in its manifest")
            return decode_images(data["images"], loaded.processor), None
        tok = loaded.tokenizer
        if kind == "embed":
            if tok is None:
                raise JobInputError(f"model {run.model_id} has no tokenizer in its manifest")
            pairs = data.get("pairs")
            first, second = ([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else (data["texts"], None)
            enc = tok(first, second, padding=True, truncation=True, max_length=256, return_tensors="pt")
            if pairs and "token_type_ids" in enc:
                run.extras = {"token_type_ids": enc["token_type_ids"]}
            return enc["input_ids"], enc["attention_mask"]
        text = data.get("prompt") if kind == "generate" else data.get("text")
        if text is not None:
            if tok is None:
                raise JobInputError(f"model {run.model_id} has no tokenizer; send 'input_ids' instead of text")
            enc = tok(text, data.get("text_pair"), return_tensors="pt", add_special_tokens=kind != "generate")
            ids = enc["input_ids"]
            if data.get("text_pair") is not None and "token_type_ids" in enc:
                run.extras = {"token_type_ids": enc["token_type_ids"]}
        else:
            ids = torch.tensor([data["input_ids"]])
            if data.get("token_type_ids") is not None:
                run.extras = {"token_type_ids": torch.tensor([data["token_type_ids"]])}
        vocab = loaded.manifest.config.vocab_size
        if int(ids.max()) >= vocab:
            raise JobInputError(f"input_ids contain {int(ids.max())}, beyond the model's vocabulary of {vocab}")
        return ids, None

    def step_estimate_ms(self, run: JobRun, x: torch.Tensor) -> float:
        """How long this job's next step at this stage should take on `x`, from measurements
        (inf until the node has measured that kind of step, and for image inputs)."""
        blocks = run.loaded.span.end - run.stages[run.stage].start
        tokens = x.shape[1] if x.dim() in (2, 3) else 0  # ids [b, n] or states [b, n, d]; not pixels
        if tokens == 1 and self.ms_per_block is not None:
            return self.ms_per_block * blocks
        if tokens > 1 and self.ms_per_block_token is not None:
            return self.ms_per_block_token * blocks * tokens
        return float("inf")

    def run_span(self, run: JobRun, x: torch.Tensor, mask: torch.Tensor | None, measure: bool = True) -> torch.Tensor:
        """Run the job's stage on `x` ([b, n] ids at stage 0, else [b, n, hidden]). `measure`:
        count it in this node's own speed and the job's `computed` (not when re-running another
        node's stage)."""
        loaded = run.loaded
        session = run.session if run.params.kind == "generate" else None
        started = time.perf_counter()
        entry = run.stages[run.stage].start
        extras, run.extras = run.extras, {}  # block 0's side inputs go with the first step only
        # a generation needs the logits of its last position only, at every step
        began = time.time()
        out = loaded.model(
            x, attention_mask=mask, session=session, start=entry, extras=extras, last_only=session is not None
        )
        result: torch.Tensor = out
        if not measure:
            return result
        elapsed = time.perf_counter() - started
        if self.slowdown > 1:  # emulating a slower machine (devnet / tests): take `slowdown` times as long
            time.sleep(elapsed * (self.slowdown - 1))
            elapsed *= self.slowdown
        run.computed = (began, time.time())
        ms = elapsed * 1000 / max(1, loaded.span.end - entry)
        self.ms_per_block = ms if self.ms_per_block is None else 0.8 * self.ms_per_block + 0.2 * ms
        if x.dim() in (2, 3) and x.shape[1] > 1:  # a pass over several tokens (a prefill, a forward)
            per_token = ms / x.shape[1]
            previous = self.ms_per_block_token
            self.ms_per_block_token = per_token if previous is None else 0.8 * previous + 0.2 * per_token
        self.calls += 1
        return result

    async def run_pass(self, run: JobRun, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """A pass over several tokens (a prefill, a forward) in a worker thread. The span's decode
        steps wait for it to end rather than block the event loop on the span's lock: prefills go
        first, so the generations they start join the decode batch from their first step, where
        steps run in between would put the earlier jobs' tokens ahead and leave them to finish
        alone at the end."""
        span = id(run.loaded)
        self._passes[span] = self._passes.get(span, 0) + 1
        try:
            return await asyncio.to_thread(self.run_span, run, x, mask)
        finally:
            self._passes[span] -= 1
            if not self._passes[span]:
                del self._passes[span]
                ended = self._passes_ended.pop(span, None)
                if ended is not None:
                    ended.set()

    async def _after_passes(self, span: int) -> None:
        while span in self._passes:
            await self._passes_ended.setdefault(span, asyncio.Event()).wait()

    # ------------------------------------------------------------------ batched decode
    @staticmethod
    def is_decode_step(run: JobRun, x: torch.Tensor, mask: torch.Tensor | None) -> bool:
        """A generation's one-token step after its prefill: what batched decode runs together."""
        return run.params.kind == "generate" and x.shape[:2] == (1, 1) and mask is None and run.session.seen > 0

    async def decode(self, run: JobRun, x: torch.Tensor, inline_ms: float) -> torch.Tensor:
        """Run a decode step, together with the decode steps of other generations on the same
        span that are waiting: while one batch computes, the steps that arrive queue up and go
        together as the next batch. Short steps run on the event loop (a thread handoff costs
        milliseconds of GIL switching per hop), longer ones in a worker thread."""
        key = (id(run.loaded), run.stages[run.stage].start)
        now = time.monotonic()
        cadence = self._cadence.get((key, run.job_id))
        if cadence is None:
            self._cadence[(key, run.job_id)] = Cadence(now)
        else:
            if cadence.departed is not None:
                cadence.away = now - cadence.departed
            cadence.interval, cadence.arrived = now - cadence.arrived, now
        alone = key not in self._draining and self._decoding(key) <= 1 and key[0] not in self._passes
        if alone and self._decode_ms.get(key, 0.0) <= inline_ms:
            return self.run_batch([(run, x)])[0]  # alone on this span: no batching machinery at all
        future: asyncio.Future[torch.Tensor] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(key, []).append((run, x, future))
        self._arrived.setdefault(key, asyncio.Event()).set()
        if key not in self._draining:
            self._draining.add(key)
            task = asyncio.create_task(self._drain(key, inline_ms))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await future

    async def _drain(self, key: tuple[int, int], inline_ms: float) -> None:
        try:
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(0)  # let messages already received queue their steps first
                if not self._waiting.get(key):
                    return
                # wait for the span's other generations: a bigger batch costs little more than a
                # small one, so jobs that drifted into separate groups merge into one and then
                # step in lock-step
                deadline = loop.time() + self._gather_s(key)
                arrived = self._arrived.setdefault(key, asyncio.Event())
                while len(self._waiting[key]) < self._decoding(key) and loop.time() < deadline:
                    arrived.clear()
                    try:
                        await asyncio.wait_for(arrived.wait(), deadline - loop.time())
                    except TimeoutError:
                        break
                await self._after_passes(key[0])  # (the steps that arrive meanwhile join this batch)
                # in job order, not arrival order: the same jobs stepping again then find their
                # padded cache in place (shardnet.model.span), where a new order re-pads every row
                batch = sorted(self._waiting.pop(key), key=lambda waiting: waiting[0].job_id)
                try:
                    if self._decode_ms.get(key, 0.0) <= inline_ms:  # short: on the event loop, no thread handoff
                        outs = self.run_batch([(r, x) for r, x, _ in batch])
                    else:
                        outs = await asyncio.to_thread(self.run_batch, [(r, x) for r, x, _ in batch])
                except Exception as exc:  # noqa: BLE001 - each waiting step gets the failure
                    for _, _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, _, future), out in zip(batch, outs, strict=True):
                    if not future.done():
                        future.set_result(out)
        finally:
            self._draining.discard(key)

    def _gather_s(self, key: tuple[int, int]) -> float:
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
        waiting = [run.job_id for run, _, _ in self._waiting.get(key, [])]
        missing = [
            (job_id, cadence)
            for (k, job_id), cadence in self._cadence.items()
            if k == key and job_id not in waiting and cadence.due(now)
        ]
        wait_ms = min(GATHER_MS, self._decode_ms.get(key, 0.0))
        smaller = len(waiting) < len(missing) or (
            len(waiting) == len(missing) and min(waiting, default=0) > min(job_id for job_id, _ in missing)
        )
        if waiting and missing and smaller:
            expected = [c.expected() for _, c in missing]
            rounds = [self._cadence[(key, job_id)].interval for job_id in waiting if (key, job_id) in self._cadence]
            if None not in expected and rounds:
                last = max(e for e in expected if e is not None)
                wait_ms = max(wait_ms, min((last - now) * 1000 + GATHER_SLACK_MS, min(rounds) * 1000))
        return wait_ms / 1000

    def _decoding(self, key: tuple[int, int]) -> int:
        """Generations whose next decode step on this span and entry is due (Cadence.due)."""
        now = time.monotonic()
        due = 0
        for (k, job_id), cadence in list(self._cadence.items()):
            if now - cadence.arrived > 30:  # long gone
                del self._cadence[(k, job_id)]
            elif k == key and cadence.due(now):
                due += 1
        return due

    def run_batch(self, batch: list[tuple[JobRun, torch.Tensor]]) -> list[torch.Tensor]:
        """Decode steps of generations on one span and entry, as one batch (shardnet.model.span)."""
        run = batch[0][0]
        key = (id(run.loaded), run.stages[run.stage].start)
        started = time.perf_counter()
        if len(batch) == 1:
            outs = [self.run_span(run, batch[0][1], None)]
        else:
            began = time.time()
            outs = run.loaded.model.forward_batch(
                [x for _, x in batch], [r.session for r, _ in batch], start=run.stages[run.stage].start
            )
            if self.slowdown > 1:
                time.sleep((time.perf_counter() - started) * (self.slowdown - 1))
            ended = time.time()
            for batched, _ in batch:
                batched.computed = (began, ended)
            self.batches += 1
            self.batched_steps += len(batch)
        self._decode_ms[key] = (time.perf_counter() - started) * 1000
        departed = time.monotonic()
        for ran, _ in batch:
            cadence = self._cadence.get((key, ran.job_id))
            if cadence is not None:
                cadence.departed = departed
        self.decode_ms_total += self._decode_ms[key]
        return outs

    def next_token(self, run: JobRun, logits: torch.Tensor) -> tuple[int, bool]:
        """Last stage, generate: the next token and whether generation is over."""
        token = sample_next(logits, run.params, run.generator)
        run.tokens.append(token)
        return token, len(run.tokens) >= run.params.max_new_tokens or token in run.loaded.eos_ids

    def output(self, run: JobRun, fields: dict[str, Any], transcripts: list[str]) -> bytes:
        """Last stage: the job output as JSON bytes (what goes to IPFS): its `output_fields`,
        every stage's transcript CID and the data-plane timings."""
        timing = dict(run.timing)
        done = timing.pop("done", time.time())  # when the last stage finished computing
        if isinstance(timing.get("t0"), float):
            timing["data_plane_ms"] = round((done - timing["t0"]) * 1000, 3)
        if run.hops[0]:  # (node.pipeline.count_hop)
            timing["hops"], timing["hop_ms"] = run.hops[0], round(run.hops[1], 3)
        # orjson writes a float32 array in its shortest exact form, ~15x faster than json with
        # Python floats (a vocabulary's logits: 2 ms instead of 33, and half the bytes to IPFS)
        return orjson.dumps({**fields, "transcripts": transcripts, "timing": timing}, option=orjson.OPT_SERIALIZE_NUMPY)

    def output_fields(self, run: JobRun, final: torch.Tensor | None) -> dict[str, Any]:
        """What the job produced (tokens and text, logits and their argmax, embeddings...), the
        part of the output that is computed (an argmax over a vocabulary at every position
        takes ~10 ms: the last stage runs this beside collecting receipts)."""
        kind = run.params.kind
        out: dict[str, Any]
        if kind == "generate":
            tok = run.loaded.tokenizer
            text = tok.decode(run.tokens, skip_special_tokens=True) if tok is not None else None
            out = {"kind": kind, "tokens": run.tokens, "text": text}
        elif final is None:
            raise JobInputError(f"job {run.job_id}: a {kind} job ended without an output tensor")
        elif kind == "embed":
            out = {"kind": kind, "embeddings": _array(final)}
        elif kind == "classify":  # image classifier logits [b, labels]: also the labels they pick
            names = getattr(run.loaded.manifest.config, "id2label", None) or {}
            picks = final.argmax(-1).tolist()
            labels = [names.get(i, names.get(str(i), str(i))) for i in picks]
            out = {"kind": kind, "shape": list(final.shape), "output": _array(final), "labels": labels}
        elif final.dim() == 3:  # decoder logits [b, q, vocab]: the last position, and every argmax
            out = {
                "kind": kind,
                "shape": list(final[:, -1].shape),
                "output": _array(final[:, -1]),
                "argmax": final.argmax(-1).tolist(),
            }
        else:
            out = {"kind": kind, "shape": list(final.shape), "output": _array(final)}
        return out


def _array(t: torch.Tensor) -> np.ndarray[Any, Any]:
    """A tensor as the float32 C-contiguous array orjson serialises (nested lists in the JSON)."""
    return t.detach().to(torch.float32).contiguous().numpy()
