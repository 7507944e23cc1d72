"""Stage 0 reads the job input (JSON on IPFS) and checks it for the job's kind; the last stage
samples the next token. Bad input raises `JobInputError` naming the field and the fix."""

from __future__ import annotations

import json
from typing import Any

import torch

from shardnet.errors import JobInputError
from shardnet.jobs import MAX_INPUT_TOKENS, MAX_TEXTS, JobParams


def parse_input(params: JobParams, raw: bytes) -> dict[str, Any]:
    """Validate the job input JSON for its kind. Returns the parsed object."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise JobInputError('the input on IPFS is not JSON; upload e.g. {"prompt": "..."}') from None
    if not isinstance(data, dict):
        raise JobInputError("the input must be a JSON object")
    if params.kind == "generate":
        if not (isinstance(data.get("prompt"), str) and data["prompt"]) and not _ids_ok(data.get("input_ids"), 1):
            raise JobInputError("generate input needs a non-empty 'prompt' string or 'input_ids' (list of ints)")
    elif params.kind == "embed":
        texts = data.get("texts")
        if not (isinstance(texts, list) and texts and all(isinstance(t, str) and t for t in texts)):
            raise JobInputError("embed input needs 'texts': a non-empty list of non-empty strings")
        if len(texts) > MAX_TEXTS:
            raise JobInputError(f"embed input has {len(texts)} texts; at most {MAX_TEXTS} per job")
    else:
        if not (isinstance(data.get("text"), str) and data["text"]) and not _ids_ok(data.get("input_ids"), 1):
            raise JobInputError("forward input needs 'text' or 'input_ids' (list of ints)")
    return data


def _ids_ok(ids: Any, minimum: int) -> bool:
    return (
        isinstance(ids, list)
        and minimum <= len(ids) <= MAX_INPUT_TOKENS
        and all(isinstance(i, int) and i >= 0 for i in ids)
    )


def sample_next(logits: torch.Tensor, params: JobParams, generator: torch.Generator | None) -> int:
    """Next token from the last position's logits [vocab]: greedy, or temperature/top-k/top-p."""
    if params.temperature == 0:
        return int(logits.argmax())
    probs_logits = logits.float() / params.temperature
    if params.top_k:
        kth = torch.topk(probs_logits, min(params.top_k, probs_logits.numel())).values[-1]
        probs_logits = probs_logits.masked_fill(probs_logits < kth, float("-inf"))
    probs = torch.softmax(probs_logits, dim=-1)
    if params.top_p < 1:
        sorted_probs, order = probs.sort(descending=True)
        keep = sorted_probs.cumsum(0) - sorted_probs < params.top_p
        filtered = torch.zeros_like(probs)
        filtered[order[keep]] = probs[order[keep]]
        probs = filtered / filtered.sum()
    return int(torch.multinomial(probs, 1, generator=generator))
