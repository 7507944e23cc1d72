"""Rebuild every job's history and every balance from contract events alone.

`Ledger.apply(event)` is a pure reducer over decoded events (shardnet.events.Event), in
chain order. Auditors use it to check contract state; nothing here reads the chain.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field, replace
from typing import Any

from shardnet.events import Event
from shardnet.protocol import Assignment, Hardware, JobStatus, Model, Receipt, Route, Stage, Terms

TERMS_FIELDS = (  # the JobMarket's Terms struct, in order (event args are keyed by these names)
    "coordinatorFeeBps",
    "maxJobDuration",
    "minAuditBps",
    "challengeWindow",
    "commitPeriod",
    "revealPeriod",
    "committeeSize",
    "verifyFeeBps",
)

Args = dict[str, Any]


@dataclass
class JobRecord:
    job_id: int
    client: str
    model_id: int
    input_cid: str
    params: bytes
    max_fee: int
    deadline: int
    status: JobStatus = JobStatus.POSTED
    escrow: int = 0
    audit_bps: int = 0  # chance per stage of an audit (the client's rate, at least the network's)
    coordinator: str | None = None
    route: Route = field(default_factory=list)
    reroutes: int = 0
    output_cid: str | None = None
    receipts: list[Receipt] = field(default_factory=list)
    payouts: dict[str, int] = field(default_factory=dict)  # payee -> wei
    refunded: int = 0
    verification: int = 0  # wei of the client's reserve paid to audit committees
    failed_nodes: list[str] = field(default_factory=list)
    contested: list[str] = field(default_factory=list)  # replaced nodes that proved they were live
    abort_reason: str | None = None
    history: list[tuple[int, str]] = field(default_factory=list)  # (block, event name)


@dataclass
class NodeRecord:
    stake: int = 0
    pending_unstake: int = 0
    slashed: int = 0


@dataclass
class BondRecord:
    bond: int = 0
    pending_unbond: int = 0


@dataclass
class AccountRecord:
    credit: int = 0  # wei credited in the market (withdrawable or still pending), not withdrawn
    open_jobs: int = 0  # routed jobs not yet settled that name the node
    jobs_done: int = 0  # stages delivered on completed jobs
    jobs_failed: int = 0  # failures the NodeRegistry recorded
    withdrawn: int = 0
    rewards: int = 0  # wei credited in the Verifier (verification pay, refunds, bonds back)


@dataclass
class AuditRecord:
    audit_id: int
    job_id: int
    stage: int
    node: str
    members: list[str]
    commit_deadline: int
    reveal_deadline: int
    challenger: str
    votes: dict[str, int] = field(default_factory=dict)  # member -> Vote (1 correct, 2 wrong)
    committed: list[str] = field(default_factory=list)
    resolved: bool = False
    upheld: bool = False
    slashed: int = 0  # wei the stage's node lost
    absent: list[str] = field(default_factory=list)
    outvoted: dict[str, int] = field(default_factory=dict)  # member -> wei it lost
    paid: list[tuple[str, int, str]] = field(default_factory=list)  # (to, wei, why)


def stage_of(s: Args) -> Stage:
    return Stage(s["node"], s["start"], s["end"], s["fee"])


def receipt_of(r: Args) -> Receipt:
    return Receipt(bytes(r["inputHash"]), bytes(r["outputHash"]), bytes(r["signature"]))


def hardware_of(h: Args) -> Hardware:
    return Hardware(h["memoryMb"], h["computeScore"], h["bandwidthMbps"])


class Ledger:
    def __init__(self) -> None:
        self.jobs: dict[int, JobRecord] = {}
        self.nodes: dict[str, NodeRecord] = defaultdict(NodeRecord)
        self.accounts: dict[str, AccountRecord] = defaultdict(AccountRecord)
        self.verifier_held = 0  # wei in the Verifier: open audits' budgets and unwithdrawn rewards
        self.reroute_fines: dict[str, int] = defaultdict(int)  # coordinator -> wei fined for contested reroutes
        self.bonds: dict[str, BondRecord] = defaultdict(BondRecord)  # coordinator -> its bond
        self.verifier: str | None = None  # its address (VerifierSet)
        self.block: int | None = None  # the last block whose events are all applied (None: not known)
        self.terms: Terms | None = None  # the market's terms in force (TermsSet)
        self.audits: dict[int, AuditRecord] = {}
        self.models: dict[int, Model] = {}
        self.endpoints: dict[str, str] = {}  # node -> data-plane URL
        self.data_keys: dict[str, bytes] = {}  # node -> its link key (node.link)
        self.hardware: dict[str, Hardware] = {}
        self.assignments: dict[int, dict[str, Assignment]] = defaultdict(dict)  # model -> node -> span
        self.last_key: tuple[int, int] = (-1, -1)  # (block, log index) of the last event applied

    def apply(self, event: Event) -> None:
        self.last_key = (event.block_number, event.log_index)
        handler = getattr(self, f"_on_{event.name}", None)
        if handler is not None:
            handler(event.args)
        job_id = event.args.get("jobId")
        if job_id in self.jobs:
            self.jobs[job_id].history.append((event.block_number, event.name))

    # ------------------------------------------------------------------ NodeRegistry
    def _on_NodeRegistered(self, a: Args) -> None:
        self.nodes[a["node"]].stake = a["stake"]
        self._on_ProfileUpdated(a)

    def _on_ProfileUpdated(self, a: Args) -> None:
        self.endpoints[a["node"]] = a["endpoint"]
        self.data_keys[a["node"]] = bytes(a["dataKey"])
        self.hardware[a["node"]] = hardware_of(a["hardware"])

    def _on_StakeAdded(self, a: Args) -> None:
        self.nodes[a["node"]].stake = a["stake"]

    def _on_UnstakeRequested(self, a: Args) -> None:
        node = self.nodes[a["node"]]
        node.stake = a["stake"]
        node.pending_unstake += a["amount"]

    def _on_UnstakeWithdrawn(self, a: Args) -> None:
        self.nodes[a["node"]].pending_unstake -= a["amount"]

    def _on_NodeSlashed(self, a: Args) -> None:
        node, amount = self.nodes[a["node"]], a["amount"]
        from_stake = min(amount, node.stake)
        node.stake -= from_stake
        node.pending_unstake -= amount - from_stake
        node.slashed += amount
        if a["by"] == self.verifier:
            self.verifier_held += amount  # slashed stake goes to the slasher (the Verifier)

    def _on_FailureRecorded(self, a: Args) -> None:
        self.accounts[a["node"]].jobs_failed += 1

    # ------------------------------------------------------------------ ModelRegistry
    def _on_ModelRegistered(self, a: Args) -> None:
        self.models[a["modelId"]] = Model(
            a["modelId"],
            a["owner"],
            a["blockCount"],
            False,
            a["pricePerBlock"],
            bytes(a["blocksRoot"]),
            a["name"],
            a["manifestCid"],
        )

    def _on_ModelDeprecated(self, a: Args) -> None:
        self.models[a["modelId"]] = replace(self.models[a["modelId"]], deprecated=True)

    def _on_ShardAssigned(self, a: Args) -> None:
        self.assignments[a["modelId"]][a["node"]] = Assignment(a["start"], a["end"], False, a["coordinator"])

    def _on_ShardConfirmed(self, a: Args) -> None:
        old = self.assignments[a["modelId"]].get(a["node"])
        self.assignments[a["modelId"]][a["node"]] = Assignment(
            a["start"], a["end"], True, old.assigned_by if old else ""
        )

    def _on_ShardReleased(self, a: Args) -> None:
        self.assignments[a["modelId"]].pop(a["node"], None)

    def confirmed(self, model_id: int) -> dict[str, Assignment]:
        """The confirmed spans of a model, by node."""
        return {n: a for n, a in self.assignments.get(model_id, {}).items() if a.confirmed}

    def active_nodes(self, min_stake: int) -> list[str]:
        return sorted(n for n, rec in self.nodes.items() if rec.stake >= min_stake and rec.stake > 0)

    # ------------------------------------------------------------------ JobMarket
    def _on_JobPosted(self, a: Args) -> None:
        self.jobs[a["jobId"]] = JobRecord(
            a["jobId"],
            a["client"],
            a["modelId"],
            a["inputCid"],
            bytes(a["params"]),
            a["maxFee"],
            a["deadline"],
            escrow=a["maxFee"],
            audit_bps=a["auditBps"],
        )

    def _set_route(self, job: JobRecord, coordinator: str, stages: list[Args]) -> None:
        for stage in job.route:
            self.accounts[stage.node].open_jobs -= 1
        job.route = [stage_of(s) for s in stages]
        job.coordinator = coordinator
        for stage in job.route:
            self.accounts[stage.node].open_jobs += 1

    def _on_JobRouted(self, a: Args) -> None:
        job = self.jobs[a["jobId"]]
        job.status = JobStatus.ROUTED
        self._set_route(job, a["coordinator"], a["stages"])

    def _on_JobRerouted(self, a: Args) -> None:
        job = self.jobs[a["jobId"]]
        job.reroutes += 1
        self._set_route(job, a["coordinator"], a["stages"])

    def _on_CoordinatorBonded(self, a: Args) -> None:
        self.bonds[a["coordinator"]].bond = a["bond"]

    def _on_UnbondRequested(self, a: Args) -> None:
        bond = self.bonds[a["coordinator"]]
        bond.bond = a["bond"]
        bond.pending_unbond += a["amount"]

    def _on_UnbondWithdrawn(self, a: Args) -> None:
        self.bonds[a["coordinator"]].pending_unbond -= a["amount"]

    def _on_RerouteContested(self, a: Args) -> None:
        """A replaced node proved it was live: its failure is struck off, the coordinator fined
        (from its bond, then from what it is unbonding)."""
        account = self.accounts[a["node"]]
        account.jobs_failed = max(0, account.jobs_failed - 1)
        self.reroute_fines[a["coordinator"]] += a["fine"]
        bond = self.bonds[a["coordinator"]]
        from_bond = min(a["fine"], bond.bond)
        bond.bond -= from_bond
        bond.pending_unbond -= a["fine"] - from_bond
        if a["jobId"] in self.jobs:
            self.jobs[a["jobId"]].contested.append(a["node"])

    def _on_StageFailed(self, a: Args) -> None:
        self.jobs[a["jobId"]].failed_nodes.append(a["node"])  # counted by FailureRecorded

    def _on_ResultSubmitted(self, a: Args) -> None:
        """One event settles the job: each stage of the route is paid its fee, the coordinator
        its cut, the client the rest (stage fees and cut pending until the audit window is over)."""
        job = self.jobs[a["jobId"]]
        job.status = JobStatus.COMPLETED
        job.output_cid = a["outputCid"]
        job.receipts = [receipt_of(r) for r in a["receipts"]]
        for stage in job.route:
            self.accounts[stage.node].open_jobs -= 1
            self.accounts[stage.node].jobs_done += 1
            self._pay(job.job_id, stage.node, stage.fee)
        if a["coordinatorCut"] and job.coordinator is not None:
            self._pay(job.job_id, job.coordinator, a["coordinatorCut"])
        self._refund(job, a["refund"])

    def _pay(self, job_id: int, payee: str, amount: int) -> None:
        job = self.jobs[job_id]
        job.escrow -= amount
        job.payouts[payee] = job.payouts.get(payee, 0) + amount
        self.accounts[payee].credit += amount

    def _on_StagePaid(self, a: Args) -> None:
        self._pay(a["jobId"], a["node"], a["amount"])

    def _on_CoordinatorPaid(self, a: Args) -> None:
        self._pay(a["jobId"], a["coordinator"], a["amount"])

    def _on_JobRefunded(self, a: Args) -> None:
        self._refund(self.jobs[a["jobId"]], a["amount"])

    def _refund(self, job: JobRecord, amount: int) -> None:
        job.escrow -= amount
        job.refunded += amount
        self.accounts[job.client].credit += amount

    def _close(self, job_id: int, status: JobStatus) -> JobRecord:
        """Settle a job without payouts: a routed job's nodes are no longer on an open route."""
        job = self.jobs[job_id]
        if job.status == JobStatus.ROUTED:
            for stage in job.route:
                self.accounts[stage.node].open_jobs -= 1
        job.status = status
        return job

    def _on_JobExpired(self, a: Args) -> None:
        """Settles an overdue job, or an aborted routed job once its stages could claim delivery."""
        aborting = self.jobs[a["jobId"]].status == JobStatus.ABORTING
        self._close(a["jobId"], JobStatus.ABORTED if aborting else JobStatus.EXPIRED)

    def _on_JobAborted(self, a: Args) -> None:
        """A posted job is settled at once (its refund follows); a routed one is ABORTING until it
        settles by expiry, its deadline now the abort's time."""
        routed = self.jobs[a["jobId"]].status == JobStatus.ROUTED
        job = self._close(a["jobId"], JobStatus.ABORTING if routed else JobStatus.ABORTED)
        job.abort_reason = a["reason"]
        job.deadline = a["deadline"]

    def _on_JobCancelled(self, a: Args) -> None:
        self.jobs[a["jobId"]].status = JobStatus.CANCELLED

    def _on_Withdrawn(self, a: Args) -> None:
        account = self.accounts[a["account"]]
        account.credit -= a["amount"]
        account.withdrawn += a["amount"]

    # ------------------------------------------------------------------ audits
    def _on_TermsSet(self, a: Args) -> None:
        self.terms = Terms(*(a["terms"][name] for name in TERMS_FIELDS))

    def _on_VerifierSet(self, a: Args) -> None:
        self.verifier = a["verifier"]

    def _on_AuditDrawn(self, a: Args) -> None:
        job = self.jobs[a["jobId"]]
        self.accounts[job.client].credit -= a["budget"]  # the committee's pay, from the client's reserve
        job.refunded -= a["budget"]
        job.verification += a["budget"]
        self.verifier_held += a["budget"]

    def _on_StageChallenged(self, a: Args) -> None:
        self.verifier_held += a["bond"]

    def _on_StageRevoked(self, a: Args) -> None:
        job = self.jobs[a["jobId"]]
        for payee, amount in ((a["node"], a["fromNode"]), (job.coordinator, a["fromCoordinator"])):
            if payee is not None and amount:
                self.accounts[payee].credit -= amount
                job.payouts[payee] = job.payouts.get(payee, 0) - amount
        back = a["fromNode"] + a["fromCoordinator"]
        self.accounts[job.client].credit += back
        job.refunded += back

    def _on_AuditOpened(self, a: Args) -> None:
        self.audits[a["auditId"]] = AuditRecord(
            a["auditId"],
            a["jobId"],
            a["stage"],
            a["node"],
            list(a["members"]),
            a["commitDeadline"],
            a["revealDeadline"],
            a["challenger"],
        )

    def _on_VoteCommitted(self, a: Args) -> None:
        self.audits[a["auditId"]].committed.append(a["member"])

    def _on_VoteRevealed(self, a: Args) -> None:
        self.audits[a["auditId"]].votes[a["member"]] = a["vote"]

    def _on_MemberAbsent(self, a: Args) -> None:
        self.audits[a["auditId"]].absent.append(a["member"])

    def _on_MemberOutvoted(self, a: Args) -> None:
        self.audits[a["auditId"]].outvoted[a["member"]] = a["slashed"]

    def _on_AuditPaid(self, a: Args) -> None:
        self.accounts[a["to"]].rewards += a["amount"]
        self.audits[a["auditId"]].paid.append((a["to"], a["amount"], a["why"]))

    def _on_AuditResolved(self, a: Args) -> None:
        audit = self.audits[a["auditId"]]
        audit.resolved, audit.upheld, audit.slashed = True, a["upheld"], a["slashed"]

    def _on_RewardWithdrawn(self, a: Args) -> None:
        self.accounts[a["account"]].rewards -= a["amount"]
        self.verifier_held -= a["amount"]
