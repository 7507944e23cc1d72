"""Job parameters (on-chain `params`, UTF-8 JSON) and job inputs/outputs (JSON on IPFS).

Bad input raises `JobInputError` whose message names the field and the fix; the node
aborts such a job on-chain with that message, so the client sees it in `job status`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from shardnet.errors import ShardnetError

KINDS = ("generate", "embed", "forward")
WIRES = ("int8", "fp16", "fp32")
MAX_NEW_TOKENS = 512
MAX_TEXTS = 256
MAX_INPUT_TOKENS = 2048


class JobInputError(ShardnetError):
    """The job's params or input cannot be served as given."""


@dataclass(frozen=True)
class JobParams:
    kind: str = "generate"  # generate | embed | forward
    max_new_tokens: int = 16  # generate: tokens to add (1..512)
    temperature: float = 0.0  # generate: 0 = greedy
    top_k: int = 0  # generate: 0 = off
    top_p: float = 1.0  # generate: nucleus mass in (0, 1]
    seed: int = 0  # generate: sampling seed
    wire: str = "int8"  # activations between stages: int8 | fp16 | fp32
    # routing: the coordinator minimises latency_ms * route_latency + fee_gwei * route_price
    # + distrust * route_trust, using only nodes with reputation >= min_reputation, none in avoid
    route_latency: float = 1.0
    route_price: float = 0.0
    route_trust: float = 0.0
    min_reputation: float = 0.0
    avoid: tuple[str, ...] = ()

    def encode(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def decode(cls, raw: bytes) -> JobParams:
        try:
            data = json.loads(raw.decode() or "{}")
        except (UnicodeDecodeError, ValueError):
            raise JobInputError('params are not UTF-8 JSON; post params like {"kind": "generate"}') from None
        if not isinstance(data, dict):
            raise JobInputError("params must be a JSON object")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise JobInputError(
                f"params has unknown field(s) {sorted(unknown)}; allowed: {sorted(cls.__dataclass_fields__)}"
            )
        if isinstance(data.get("avoid"), list):
            data["avoid"] = tuple(data["avoid"])
        try:
            params = cls(**data)
        except TypeError as exc:
            raise JobInputError(f"params: {exc}") from None
        params.validate()
        return params

    def validate(self) -> None:
        def bad(field: str, fix: str):
            raise JobInputError(f"params.{field}={getattr(self, field)!r} is out of range; {fix}")

        if self.kind not in KINDS:
            bad("kind", f"use one of {KINDS}")
        if not isinstance(self.max_new_tokens, int) or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS:
            bad("max_new_tokens", f"use an integer in 1..{MAX_NEW_TOKENS}")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 5:
            bad("temperature", "use a number in 0..5 (0 = greedy)")
        if not isinstance(self.top_k, int) or not 0 <= self.top_k <= 10_000:
            bad("top_k", "use an integer in 0..10000 (0 = off)")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            bad("top_p", "use a number in (0, 1]")
        if not isinstance(self.seed, int):
            bad("seed", "use an integer")
        if self.wire not in WIRES:
            bad("wire", f"use one of {WIRES}")
        for field in ("route_latency", "route_price", "route_trust"):
            if not isinstance(getattr(self, field), (int, float)) or getattr(self, field) < 0:
                bad(field, "use a weight >= 0")
        if not isinstance(self.min_reputation, (int, float)) or not 0 <= self.min_reputation <= 1:
            bad("min_reputation", "use a number in 0..1")
        if not isinstance(self.avoid, tuple) or not all(
            isinstance(a, str) and len(a) == 42 and a.startswith("0x") for a in self.avoid
        ):
            bad("avoid", "use a list of 0x-prefixed node addresses")


def parse_input(params: JobParams, raw: bytes) -> dict:
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


def _ids_ok(ids, minimum: int) -> bool:
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
