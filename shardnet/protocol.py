"""Messages shared by node, coordinator, client and auditor code: frozen dataclasses whose
fields mirror the contract structs (spans are half-open: [start, end))."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


@dataclass(frozen=True)
class Span:
    start: int  # first block, inclusive
    end: int  # last block, exclusive

    def __post_init__(self):
        if not 0 <= self.start < self.end:
            raise ValueError(f"span [{self.start}, {self.end}) is empty or negative; need 0 <= start < end")

    def __len__(self) -> int:
        return self.end - self.start

    def __contains__(self, block: int) -> bool:
        return self.start <= block < self.end


@dataclass(frozen=True)
class Hardware:
    memory_mb: int  # MiB usable for blocks
    compute_score: int  # relative throughput, higher is faster
    bandwidth_mbps: int  # Mbit/s

    def as_tuple(self) -> tuple[int, int, int]:
        return (self.memory_mb, self.compute_score, self.bandwidth_mbps)


@dataclass(frozen=True)
class NodeInfo:
    address: str
    stake: int  # wei
    pending_unstake: int  # wei
    unlock_at: int  # unix seconds
    registered_at: int  # unix seconds
    hardware: Hardware
    endpoint: str
    data_key: bytes


@dataclass(frozen=True)
class Model:
    model_id: int
    owner: str
    block_count: int
    deprecated: bool
    price_per_block: int  # wei
    blocks_root: bytes
    name: str
    manifest_cid: str


@dataclass(frozen=True)
class Assignment:
    start: int
    end: int  # 0 = none
    confirmed: bool
    assigned_by: str


@dataclass(frozen=True)
class Stage:
    node: str
    start: int
    end: int
    fee: int  # wei

    def as_tuple(self) -> tuple:
        return (self.node, self.start, self.end, self.fee)


@dataclass(frozen=True)
class Receipt:
    input_hash: bytes  # keccak256 of the activations that entered the stage
    output_hash: bytes  # keccak256 of what left it (last stage: keccak256(outputCid))
    signature: bytes  # 65-byte EIP-712 signature by the stage node

    def as_tuple(self) -> tuple:
        return (self.input_hash, self.output_hash, self.signature)


class JobStatus(IntEnum):
    NONE = 0
    POSTED = 1
    ROUTED = 2
    COMPLETED = 3
    EXPIRED = 4
    CANCELLED = 5
    ABORTED = 6


@dataclass(frozen=True)
class Job:
    job_id: int
    client: str
    escrow: int  # wei still held
    deadline: int  # unix seconds
    model_id: int
    status: JobStatus
    route_hash: bytes  # first 20 bytes of keccak256(abi.encode(coordinator, stages))


@dataclass(frozen=True)
class Account:
    credit: int  # wei withdrawable
    open_jobs: int
    jobs_done: int
    jobs_failed: int
