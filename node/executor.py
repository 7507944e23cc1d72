"""Executor: the spans this node serves, and the per-job state (node.runs) of every job it is
running: its steps (batched decode's queues: node.batching) and its output.

Loading a span fetches exactly its blocks from IPFS and verifies them (shardnet.model.shards).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import orjson
import torch

from node.batching import DecodeBatcher, Step
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


class Executor:
    def __init__(self, ipfs: IpfsClient, ipfs_timeout_s: float, slowdown: float = 1.0, huge_pages: bool = True):
        self.ipfs = ipfs
        self.ipfs_timeout_s = ipfs_timeout_s
        self.spans: dict[int, LoadedSpan] = {}  # model id -> the span this node serves now
        self.jobs: dict[int, JobRun] = {}
        # per model, spans served before a move that jobs routed before it may still need
        self.retired: dict[int, list[LoadedSpan]] = {}
        self.slowdown = slowdown
        self.huge_pages = huge_pages  # spans' weights on 2 MiB pages (shardnet.model.pages)
        self.ms_per_block: float | None = None  # measured: moving average of compute per block per call
        self.ms_per_block_token: float | None = None  # the same per token, from passes over several tokens
        self.calls = 0
        self.decoding = DecodeBatcher(lambda steps: self.run_batch(steps))  # (node.batching)

    # ------------------------------------------------------------------ spans
    def load(self, model_id: int, manifest_cid: str, span: Span) -> LoadedSpan:
        """Fetch, verify and load the blocks of `span` (and the tokenizer at the ends). It is not
        served until `serve` makes it so (a span loaded to check another node's stage never is)."""
        manifest = fetch_manifest(self.ipfs, manifest_cid, timeout=self.ipfs_timeout_s)
        blocks = fetch_span(self.ipfs, manifest, span, timeout=self.ipfs_timeout_s)
        model = SpanModel(manifest.new_config(), span, blocks, manifest.data.get("pooling"), self.huge_pages)
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
        self.decoding.forget(job_id)
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
        """A pass over several tokens (a prefill, a forward) in a worker thread; the span's decode
        steps wait for it (DecodeBatcher.run_pass)."""
        return await self.decoding.run_pass(id(run.loaded), lambda: self.run_span(run, x, mask))

    def run_batch(self, batch: list[Step]) -> list[torch.Tensor]:
        """Decode steps of generations on one span and entry, as one batch (shardnet.model.span);
        one step runs as a plain step. DecodeBatcher decides what goes together."""
        run = batch[0][0]
        if len(batch) == 1:
            return [self.run_span(run, batch[0][1], None)]
        started, began = time.perf_counter(), time.time()
        outs = run.loaded.model.forward_batch(
            [x for _, x in batch], [r.session for r, _ in batch], start=run.stages[run.stage].start
        )
        if self.slowdown > 1:
            time.sleep((time.perf_counter() - started) * (self.slowdown - 1))
        ended = time.time()
        for batched, _ in batch:
            batched.computed = (began, ended)
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
