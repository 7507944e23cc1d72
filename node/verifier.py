"""Re-executing another node's stage from its transcript: the check a verification committee
member runs before it votes.

The stage is re-run with this node's own executor (the code that serves jobs), message by
message, from what the stage received. Every activation it claims to have sent is compared with
the recomputed one passed through the same wire encoding (int8 / fp16 / fp32): honest machines
differ only by float summation order (thread counts, batching), which stays below `TOLERANCE`
(fp16, fp32) or moves a few int8 codes by one step (`int8_departure`); corrupting an activation
by 1% of its norm does neither.
The last stage's claim is the job output: sampled tokens must match exactly (greedy: up to a
near-tie of the two logits), final tensors within `TOLERANCE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from node.executor import Executor
from node.messages import unpack
from node.runs import JobRun, LoadedSpan
from shardnet.errors import ContentNotFound, JobInputError, ShardnetError, StorageUnavailable
from shardnet.jobs import JobParams
from shardnet.ledger import JobRecord
from shardnet.model.quant import DEFAULT_BLOCK_SIZE, decode_activation, encode_activation
from shardnet.model.span import Session
from shardnet.protocol import Span, Stage
from shardnet.sealing import decrypt
from shardnet.transcripts import Transcript, mismatch

TOLERANCE = 2e-3  # relative L2 error: honest stages measured up to 2.5e-4; 1% noise is 1e-2
INT8_FLIPS = 3  # on an int8 wire: codes one step off that honest noise may cause (int8_departure)
GREEDY_TIE = 1e-4  # logits this close (relative) are a tie: either token is honest


@dataclass(frozen=True)
class Verdict:
    honest: bool
    reason: str  # where and how the stage's claim departs from the re-run ("" when honest)
    worst_error: float  # largest relative error seen over the stage's messages
    messages: int  # messages re-run
    # the evidence (a transcript, the output) could not be found on IPFS: a claim without its
    # evidence is dishonest, but it may still arrive (its node restarting): check again first
    missing: bool = False


@dataclass(frozen=True)
class StageClaim:
    """One stage of a completed job, as the chain and IPFS record it."""

    job_id: int
    model_id: int
    stage: int
    route: list[Stage]
    coordinator: str
    params: JobParams
    transcript: Transcript
    output: dict[str, Any] | None  # the job output JSON (the last stage's claim)
    job_key: bytes | None = None  # a private job's key: its input is sealed


def relative_error(claimed: torch.Tensor, recomputed: torch.Tensor) -> float:
    if claimed.shape != recomputed.shape:
        return float("inf")
    scale = float(recomputed.float().norm()) or 1.0
    return float((claimed.float() - recomputed.float()).norm()) / scale


def int8_departure(claimed: torch.Tensor, recomputed: torch.Tensor, block_size: int = DEFAULT_BLOCK_SIZE) -> str:
    """How an int8 activation departs from the recomputed one by more than honest noise ("" if
    it does not). Summation order (batching, thread counts) moves an int8 code only when a value
    sits on a rounding edge: a code or two by one step. A relative bound cannot tell that from
    tampering on a small activation (one step of a 64-wide block whose largest value dominates is
    about 8e-3 of its norm), so codes are compared in steps of each block's scale: any value off
    by more than a step and a half, or more than `INT8_FLIPS` values (or 2% of them) off by one
    step, is not honest. Noise of 1% of the norm moves a sixth to a half of the codes."""
    if claimed.shape != recomputed.shape:
        return f"shape {list(claimed.shape)} instead of {list(recomputed.shape)}"
    flat_c, flat_r = claimed.float().flatten(), recomputed.float().flatten()
    pad = (-flat_r.numel()) % block_size
    diff = torch.nn.functional.pad(flat_c - flat_r, (0, pad)).view(-1, block_size).abs()
    step = torch.nn.functional.pad(flat_r, (0, pad)).view(-1, block_size).abs().amax(1, keepdim=True) / 127
    steps = diff / step.clamp_min(1e-30)
    if bool((steps > 1.5).any()):
        return f"a value is {float(steps.max()):.1f} int8 steps off"
    flips = int((steps > 0.5).sum())
    allowed = max(INT8_FLIPS, flat_r.numel() // 50)
    if flips > allowed:
        return f"{flips} int8 codes are a step off (honest noise moves at most {allowed})"
    return ""


def verify_stage(executor: Executor, loaded: LoadedSpan, claim: StageClaim) -> Verdict:
    """Re-run `claim`'s stage on `loaded` (a span covering it) and judge its claims."""
    params = claim.params
    session = loaded.model.new_session() if params.kind == "generate" else Session()
    run = JobRun(claim.job_id, claim.model_id, claim.stage, claim.route, claim.coordinator, params, session, loaded)
    if params.kind == "generate":
        run.generator = torch.Generator().manual_seed(params.seed)
    sent = list(claim.transcript.sent)
    worst = 0.0

    def verdict(reason: str) -> Verdict:
        return Verdict(not reason, reason, worst, len(claim.transcript.received))

    for i, body in enumerate(claim.transcript.received):
        try:
            x, mask = _input(executor, run, i, body, claim.job_key)
        except (ShardnetError, ValueError, KeyError) as exc:
            return verdict(f"message {i} cannot be re-run: {exc}")
        out = executor.run_span(run, x, mask, measure=False)
        if not run.is_last:
            if i >= len(sent):
                return verdict(f"message {i}: the stage sent nothing for it")
            claimed_bytes, mine_bytes = unpack(sent[i])[1], encode_activation(out, params.wire)
            if claimed_bytes != mine_bytes:  # identical bytes (the usual honest case) differ by nothing
                claimed, mine = decode_activation(claimed_bytes), decode_activation(mine_bytes)
                worst = max(worst, relative_error(claimed, mine))
                departs = (
                    int8_departure(claimed, mine)
                    if params.wire == "int8"
                    else (f"it differs by {worst:.2e} (tolerance {TOLERANCE:.0e})" if worst > TOLERANCE else "")
                )
                if departs:
                    return verdict(f"message {i}: activation departs from the re-run: {departs}")
            continue
        reason = _check_last(run, executor, i, out, claim.output)
        if reason:
            return verdict(reason)
        if params.kind != "generate":
            worst = max(worst, _final_error(params.kind, out, claim.output))
            if worst > TOLERANCE:
                return verdict(f"output differs by {worst:.2e} (tolerance {TOLERANCE:.0e})")
    if not run.is_last and len(sent) != len(claim.transcript.received):
        return verdict(f"the stage sent {len(sent)} messages for {len(claim.transcript.received)} received")
    if run.is_last and params.kind == "generate" and claim.output is not None:
        if len(run.tokens) != len(claim.output.get("tokens", [])):
            return verdict(
                f"the output has {len(claim.output.get('tokens', []))} tokens; the re-run made {len(run.tokens)}"
            )
    return verdict("")


def _input(
    executor: Executor, run: JobRun, i: int, body: bytes, job_key: bytes | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    if run.is_first and i == 0:  # the raw job input
        ids, mask = executor.first_input(run, body, job_key)
        run.attention_mask = mask
        return ids, mask
    header, payload = unpack(body)
    if header.get("kind") == "tokens":
        return torch.tensor([header["ids"]]), None
    mask = torch.tensor(header["mask"]) if "mask" in header else None
    return decode_activation(payload), mask


def _check_last(run: JobRun, executor: Executor, i: int, out: torch.Tensor, output: dict[str, Any] | None) -> str:
    if output is None:
        return "no job output to check the last stage against"
    if run.params.kind != "generate":
        return ""
    claimed_tokens = output.get("tokens")
    if not isinstance(claimed_tokens, list) or i >= len(claimed_tokens):
        return f"step {i}: the output has no token for it"
    token, _ = executor.next_token(run, out)
    claimed = claimed_tokens[i]
    if claimed == token:
        return ""
    logits = out[0, -1].float()
    if run.params.temperature == 0 and isinstance(claimed, int) and 0 <= claimed < logits.numel():
        gap = float(logits[token] - logits[claimed]) / (float(logits.abs().max()) or 1.0)
        if gap <= GREEDY_TIE:  # a near-tie that float order can flip: both are honest
            run.tokens[-1] = claimed
            return ""
    return f"step {i}: token {claimed!r} claimed, the re-run gives {token}"


def _final_error(kind: str, out: torch.Tensor, output: dict[str, Any] | None) -> float:
    if output is None:
        raise JobInputError("no job output to check the last stage against")
    if kind == "embed":
        return relative_error(torch.tensor(output["embeddings"]), out)
    recomputed = out[:, -1] if out.dim() == 3 else out
    return relative_error(torch.tensor(output["output"]), recomputed)


SpanCache = dict[tuple[int, Span], LoadedSpan]  # (model id, span) -> loaded, for checking many jobs


def check_job(
    executor: Executor,
    record: JobRecord,
    manifest_cid: str,
    output: dict[str, Any],
    spans: SpanCache | None = None,
    job_key: bytes | None = None,
) -> list[Verdict]:
    """Check every stage of a completed job the way a committee would: each transcript (from
    IPFS, listed in the output) against its receipt (and stage 0's against the job input), then
    each stage re-run on its span, fetched and verified from IPFS. One verdict per stage. Pass
    the same `spans` when checking many jobs: each span is then fetched and loaded once."""
    spans = {} if spans is None else spans
    return [check_stage(executor, record, manifest_cid, output, k, spans, job_key) for k in range(len(record.route))]


def check_stage(
    executor: Executor,
    record: JobRecord,
    manifest_cid: str,
    output: dict[str, Any],
    k: int,
    spans: SpanCache,
    job_key: bytes | None = None,
    timeout: float | None = None,
) -> Verdict:
    """Check stage `k` of a completed job: its transcript (from IPFS, listed in the output)
    against its receipt (and stage 0's against the job input), then the stage re-run on its span,
    fetched and verified from IPFS (kept in `spans`). A transcript that cannot be read or does
    not match what the stage signed is a dishonest claim: the stage owes the evidence (one not
    found within `timeout` s is marked `missing`). This node's own IPFS daemon not answering
    raises StorageUnavailable: no evidence against the stage."""
    route, cids = record.route, output.get("transcripts")
    if not isinstance(cids, list) or len(cids) != len(route) or len(record.receipts) != len(route):
        return Verdict(False, "the job has no transcript and receipt per stage", float("inf"), 0)
    try:
        params = JobParams.decode(record.params)
    except JobInputError as exc:
        return Verdict(False, f"the job's params cannot be read: {exc}", float("inf"), 0)
    read, timeout = executor.ipfs.cat, min(timeout or executor.ipfs_timeout_s, executor.ipfs_timeout_s)
    stage, cid = route[k], cids[k]
    try:
        data = read(cid, timeout=timeout)
        if params.private:  # sealed under the job key (shardnet.sealing)
            if job_key is None:
                raise ShardnetError("the job is private and no node of its route gave its key")
            data = decrypt(job_key, data, f"transcript:{record.job_id}:{k}")
        transcript = Transcript.decode(data)
        job_input = read(record.input_cid, timeout=timeout) if k == 0 else None
    except StorageUnavailable:
        raise
    except (ShardnetError, ValueError) as exc:
        missing = isinstance(exc, ContentNotFound)
        return Verdict(False, f"stage {k}: transcript {cid} cannot be read: {exc}", float("inf"), 0, missing)
    reason = mismatch(transcript, record.receipts[k], k == len(route) - 1, job_input)
    if reason:
        return Verdict(False, f"stage {k}: transcript {cid}: {reason}", 0.0, 0)
    key = (record.model_id, Span(stage.start, stage.end))
    loaded = spans.get(key) or spans.setdefault(key, executor.load(key[0], manifest_cid, key[1]))
    claim = StageClaim(
        record.job_id, record.model_id, k, route, record.coordinator or "", params, transcript, output, job_key
    )
    return verify_stage(executor, loaded, claim)
