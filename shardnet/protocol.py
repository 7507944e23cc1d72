"""Records shared by node, coordinator, client and auditor code, typed end to end: frozen
dataclasses whose fields mirror the contract structs (spans are half-open: [start, end)).

`Hardware`, `Stage` and `Receipt` are the contracts' ABI tuples, so they are typed named tuples:
web3 encodes them as they are, and events decode straight into them.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from shardnet.errors import ModelError

# The project's contracts, in deployment order: the one place that lists them.
CONTRACTS = ("NodeRegistry", "ModelRegistry", "JobMarket")


@dataclass(frozen=True)
class Span:
    start: int  # first block, inclusive
    end: int  # last block, exclusive

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end:
            raise ModelError(f"span [{self.start}, {self.end}) is empty or negative; need 0 <= start < end")

    def __len__(self) -> int:
        return self.end - self.start

    def __contains__(self, block: int) -> bool:
        return self.start <= block < self.end


class Hardware(NamedTuple):
    memory_mb: int  # MiB usable for blocks
    compute_score: int  # relative throughput, higher is faster
    bandwidth_mbps: int  # Mbit/s


@dataclass(frozen=True)
class NodeInfo:
    address: str
    stake: int  # wei
    pending_unstake: int  # wei
    unlock_at: int  # unix seconds
    registered_at: int  # unix seconds
    reputation: Reputation
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
    """A node's span of a model (ShardAssigned), and whether the node confirmed it."""

    start: int
    end: int  # 0 = none
    confirmed: bool
    assigned_by: str  # the coordinator that recorded it

    @property
    def span(self) -> Span:
        return Span(self.start, self.end)


class Stage(NamedTuple):
    """One hop of a route: `node` runs blocks [start, end) for `fee` wei."""

    node: str
    start: int
    end: int
    fee: int  # wei


Route = list[Stage]


class Receipt(NamedTuple):
    input_hash: bytes  # keccak256 chain of the messages that entered the stage
    output_hash: bytes  # keccak256 chain of what left it (last stage: keccak256(outputCid))
    signature: bytes  # 65-byte EIP-712 signature by the stage node


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
    coordinator_fee_bps: int  # the coordinator's cut, fixed when the job was routed


class Reputation(NamedTuple):
    """A node's record, kept by the NodeRegistry as the market opens and closes routes."""

    open_jobs: int  # routed jobs not yet settled that name the node
    jobs_done: int  # stages delivered on completed jobs
    jobs_failed: int  # stages that did not deliver (expired or rerouted away)


@dataclass(frozen=True)
class Account:
    credit: int  # wei withdrawable from the market
    open_jobs: int
    jobs_done: int
    jobs_failed: int
