"""Which stages of a completed job are audited: the same draw `JobMarket.auditedStages` makes
on-chain, computed from the hash of the block the result landed in, so a node knows whether to
open the audits (and a client or auditor can check the draw) without a call that needs a later
block to exist."""

from __future__ import annotations

from eth_abi.abi import encode
from eth_utils.crypto import keccak

BPS = 10_000
MAX_ROUTE_STAGES = 64


def audited_stages(result_block_hash: bytes, job_id: int, stage_count: int, audit_bps: int) -> int:
    """Bit i set when stage i is drawn: keccak256(abi.encode(blockhash, jobId, i)) % 10000 < rate."""
    mask = 0
    for i in range(min(stage_count, MAX_ROUTE_STAGES)):
        draw = int.from_bytes(keccak(encode(["bytes32", "uint256", "uint256"], [result_block_hash, job_id, i])), "big")
        if draw % BPS < audit_bps:
            mask |= 1 << i
    return mask


def stages_of(mask: int) -> list[int]:
    return [i for i in range(MAX_ROUTE_STAGES) if mask >> i & 1]
