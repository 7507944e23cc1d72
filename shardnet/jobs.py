"""Job parameters: the on-chain `params` of a job (UTF-8 JSON), read by client, coordinator
(routing weights and limits) and nodes alike.

Bad params raise `JobInputError` whose message names the field and the fix; the node or
coordinator aborts such a job on-chain with that message, so the client sees it in
`job status`. What a job's input must hold is the node's business (`node.inputs`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import NoReturn

from shardnet.errors import JobInputError

KINDS = ("generate", "embed", "forward", "classify")
WIRES = ("int8", "fp16", "fp32")
MAX_NEW_TOKENS = 512
MAX_TEXTS = 256
MAX_INPUT_TOKENS = 2048
MAX_IMAGES = 16  # classify: images per job
MAX_IMAGE_BYTES = 4 * 1024 * 1024  # classify: one encoded image (PNG, JPEG, ...)


@dataclass(frozen=True)
class JobParams:
    kind: str = "generate"  # generate | embed | forward | classify
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
    # checking: the chance each stage is re-executed by a committee, at least the network's
    # minimum; a higher rate costs committee_size * verify_fee_bps of each audited stage's fee
    audit_rate: float = 0.0
    # privacy: the input, transcripts and output on IPFS are encrypted under a key the client
    # gives only the route's nodes (and the committees that check them); see shardnet.sealing
    private: bool = False

    @property
    def audit_bps(self) -> int:
        return round(self.audit_rate * 10_000)

    def encode(self) -> bytes:
        """The params as posted on-chain: JSON of the fields that differ from their defaults."""
        defaults = JobParams()
        changed = {k: v for k, v in asdict(self).items() if v != getattr(defaults, k)}
        return json.dumps(changed, sort_keys=True, separators=(",", ":")).encode()

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
        # params come from JSON anyone may post: check the types too, not only the ranges
        v: dict[str, object] = {name: getattr(self, name) for name in self.__dataclass_fields__}

        def bad(field: str, fix: str) -> NoReturn:
            raise JobInputError(f"params.{field}={v[field]!r} is out of range; {fix}")

        def number(field: str) -> float | None:
            value = v[field]
            return float(value) if isinstance(value, int | float) else None

        def integer(field: str) -> int | None:
            value = v[field]
            return value if isinstance(value, int) else None

        if v["kind"] not in KINDS:
            bad("kind", f"use one of {KINDS}")
        if (n := integer("max_new_tokens")) is None or not 1 <= n <= MAX_NEW_TOKENS:
            bad("max_new_tokens", f"use an integer in 1..{MAX_NEW_TOKENS}")
        if (t := number("temperature")) is None or not 0 <= t <= 5:
            bad("temperature", "use a number in 0..5 (0 = greedy)")
        if (k := integer("top_k")) is None or not 0 <= k <= 10_000:
            bad("top_k", "use an integer in 0..10000 (0 = off)")
        if (p := number("top_p")) is None or not 0 < p <= 1:
            bad("top_p", "use a number in (0, 1]")
        if integer("seed") is None:
            bad("seed", "use an integer")
        if v["wire"] not in WIRES:
            bad("wire", f"use one of {WIRES}")
        for field in ("route_latency", "route_price", "route_trust"):
            if (w := number(field)) is None or w < 0:
                bad(field, "use a weight >= 0")
        if (r := number("min_reputation")) is None or not 0 <= r <= 1:
            bad("min_reputation", "use a number in 0..1")
        if (a := number("audit_rate")) is None or not 0 <= a <= 1:
            bad("audit_rate", "use a number in 0..1 (1 = every stage audited)")
        if not isinstance(v["private"], bool):
            bad("private", "use true or false")
        avoid = v["avoid"]
        if not isinstance(avoid, tuple) or not all(
            isinstance(a, str) and len(a) == 42 and a.startswith("0x") for a in avoid
        ):
            bad("avoid", "use a list of 0x-prefixed node addresses")


def escrow_needed(fees: int, coordinator_fee_bps: int, reserve_bps: int = 0) -> int:
    """What the market needs in escrow for stage fees `fees`: the fees, the coordinator's cut,
    and for a job that may be audited the committees' reserve (`reserve_bps` of the fees)."""
    return fees + fees * coordinator_fee_bps // 10_000 + fees * reserve_bps // 10_000
