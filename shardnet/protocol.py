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
CONTRACTS = ("NodeRegistry", "ModelRegistry", "JobMarket", "Verifier")

# The most a last stage hands its client straight (node.outputs) and a client takes from it; a
# bigger output is read from IPFS only.
HANDOVER_MAX_BYTES = 16 << 20


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
    jobs_failed: int  # stages failed (expired, rerouted away, audits not answered)
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
    ABORTING = 7  # a routed job was aborted: its stages may claim delivery, then it settles as ABORTED


SETTLED = (JobStatus.COMPLETED, JobStatus.EXPIRED, JobStatus.CANCELLED, JobStatus.ABORTED)
# no result will come: settled, or aborted while routed (its refund follows the claim window)
ENDED = (*SETTLED, JobStatus.ABORTING)


@dataclass(frozen=True)
class Job:
    """A job as the market stores it. Once COMPLETED the escrow is paid out, and the contract
    keeps in `deadline` the time the result was submitted and in `escrow` its block number
    (see `submitted_at` and `result_block`)."""

    job_id: int
    client: str
    escrow: int  # wei still held
    audit_bps: int  # chance per stage of an audit, in basis points
    deadline: int  # unix seconds
    model_id: int
    status: JobStatus
    route_hash: bytes  # first 20 bytes of keccak256(abi.encode(coordinator, stages))
    coordinator_fee_bps: int  # the coordinator's cut, fixed when the job was routed

    @property
    def submitted_at(self) -> int | None:
        return self.deadline if self.status == JobStatus.COMPLETED else None

    @property
    def result_block(self) -> int | None:
        return self.escrow if self.status == JobStatus.COMPLETED else None

    @property
    def held(self) -> int:
        """Wei the market still holds for this job (0 once it settled; an aborting job still holds
        its escrow until its claim window closes)."""
        return self.escrow if self.status in (JobStatus.POSTED, JobStatus.ROUTED, JobStatus.ABORTING) else 0


@dataclass(frozen=True)
class Account:
    credit: int  # wei withdrawable from the market now
    pending: int  # wei credited, withdrawable once its audit window is over
    pending_until: int  # unix seconds when all of `pending` is withdrawable (0: none pending)
    jobs_failed: int  # stages failed, as the NodeRegistry records them


@dataclass(frozen=True)
class Terms:
    """The JobMarket's terms (one slot on-chain), in the struct's order."""

    coordinator_fee_bps: int
    max_job_duration: int
    min_audit_bps: int
    challenge_window: int
    commit_period: int
    reveal_period: int
    committee_size: int
    verify_fee_bps: int


class Vote(IntEnum):
    NONE = 0
    CORRECT = 1
    WRONG = 2


@dataclass(frozen=True)
class Audit:
    """One stage sent to a committee (Verifier.getAudit)."""

    audit_id: int
    job_id: int
    stage: int
    node: str
    fee: int
    client: str
    coordinator: str
    challenger: str  # zero address for a drawn audit
    budget: int
    commit_deadline: int
    reveal_deadline: int
    size: int
    committed: int
    revealed: int
    wrong_votes: int
    resolved: bool
    upheld: bool
