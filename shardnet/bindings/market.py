"""JobMarket: jobs, routes, results, receipts, expiry, credit and terms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from eth_account.signers.local import LocalAccount
from web3.types import BlockIdentifier

from shardnet.bindings.base import ZERO_ADDRESS, Binding, as_abi
from shardnet.chain import Chain
from shardnet.protocol import (
    Job,
    JobStatus,
    Receipt,
    Stage,
    Terms,
)
from shardnet.receipts import ReceiptDomain

# submitResult's gas, bounded: about 50k for the job, 30k per stage (receipt check, pending
# credit); the bound doubles that, plus room for the cold slots of a first job
SUBMIT_GAS_BASE = 150_000
SUBMIT_GAS_PER_STAGE = 60_000
# postJob's: about 90k with a short CID and params (two new storage slots), plus calldata and the
# event's data per byte of CID and params (under 30 gas); the bound is well above both
POST_GAS_BASE = 200_000
POST_GAS_PER_BYTE = 100


def route_gas_limit(stages: int) -> int:
    """A bound on routeJob's gas: about 60k for the job and 10k per stage (reading its span and
    node, the event's data), 88k for three stages; three times that, and room for cold slots."""
    return 150_000 + 40_000 * stages


class JobMarket(Binding):
    name = "JobMarket"

    def __init__(self, chain: Chain, address: str | None = None, block: BlockIdentifier = "latest"):
        super().__init__(chain, address, block)
        self.receipts = ReceiptDomain(chain.chain_id, self.address)  # signs and checks this market's receipts

    def post_job(
        self,
        model_id: int,
        input_cid: str,
        params: bytes,
        max_fee: int,
        deadline: int,
        account: LocalAccount | None = None,
        audit_bps: int = 0,
    ) -> int:
        """Post a job; `audit_bps` asks for more audits than the network's minimum (0..10000).
        Simulated once and sent with a bound on its gas (it is on every job's critical path)."""
        receipt = self._tx(
            self.contract.functions.postJob(model_id, input_cid, params, max_fee, deadline, audit_bps),
            max_fee,
            account,
            gas_limit=POST_GAS_BASE + POST_GAS_PER_BYTE * (len(input_cid) + len(params)),
        )
        return int(next(e.args["jobId"] for e in self.events_in(receipt) if e.name == "JobPosted"))

    def cancel_job(self, job_id: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.cancelJob(job_id), 0, account)

    def route_job(self, job_id: int, stages: list[Stage], account: LocalAccount | None = None) -> dict[str, Any]:
        """Simulated once and sent with a bound on its gas (it is on every job's critical path)."""
        fn = self.contract.functions.routeJob(job_id, as_abi(stages))
        return self._tx(fn, 0, account, gas_limit=route_gas_limit(len(stages)))

    def reroute_job(
        self, job_id: int, old_coordinator: str, old: list[Stage], new: list[Stage], account: LocalAccount | None = None
    ) -> dict[str, Any]:
        """`old_coordinator` and `old` are the route being replaced, as its JobRouted event published it."""
        return self._tx(
            self.contract.functions.rerouteJob(job_id, old_coordinator, as_abi(old), as_abi(new)), 0, account
        )

    def submit_result(
        self,
        job_id: int,
        coordinator: str,
        stages: list[Stage],
        output_cid: str,
        receipts: list[Receipt],
        account: LocalAccount | None = None,
    ) -> dict[str, Any]:
        """`coordinator` and `stages` are the job's current route (JobRouted / JobRerouted).
        Simulated once and sent with a bound on its gas rather than estimated: it is on the
        critical path of every job."""
        return self._tx(
            self.contract.functions.submitResult(job_id, coordinator, as_abi(stages), output_cid, as_abi(receipts)),
            0,
            account,
            gas_limit=SUBMIT_GAS_BASE + SUBMIT_GAS_PER_STAGE * len(stages),
        )

    def claim_delivery(
        self,
        job_id: int,
        coordinator: str,
        stages: Sequence[Stage],
        stage: int,
        receipt: Receipt,
        account: LocalAccount | None = None,
        gas: int | None = None,
    ) -> dict[str, Any]:
        """A stage of an unfinished routed job proves it delivered (after the deadline, within the
        claim window): its own receipt for that stage of the route `coordinator` recorded. With
        `gas`, the call is sent without simulating it first: on a chain that mines only on demand
        the latest block's clock can lag the deadline the claim depends on."""
        fn = self.contract.functions.claimDelivery(job_id, coordinator, as_abi(stages), stage, tuple(receipt))
        return self._tx(fn, 0, account, gas)

    def expire_job(
        self,
        job_id: int,
        coordinator: str = ZERO_ADDRESS,
        stages: Sequence[Stage] = (),
        account: LocalAccount | None = None,
    ) -> dict[str, Any]:
        """Settle an unfinished job: a posted one after its deadline (no route), a routed one after
        the claim window (its route): delivered stages paid, the others recorded failed."""
        return self._tx(self.contract.functions.expireJob(job_id, coordinator, as_abi(stages)), 0, account)

    def claim_window_s(self) -> int:
        return int(self._call(self.contract.functions.CLAIM_WINDOW()))

    def abort_job(
        self, job_id: int, coordinator: str, stages: list[Stage], reason: str, account: LocalAccount | None = None
    ) -> dict[str, Any]:
        return self._tx(self.contract.functions.abortJob(job_id, coordinator, as_abi(stages), reason), 0, account)

    def withdraw(self, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.withdraw(), 0, account)

    def set_terms(self, terms: Terms, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.setTerms(tuple(vars(terms).values())), 0, account)

    def audited_stages(self, job_id: int, stage_count: int) -> int:
        """Bit i set when stage i of a completed job was drawn for audit (0 once out of reach)."""
        return int(self._call(self.contract.functions.auditedStages(job_id, stage_count)))

    def draw_audits(
        self,
        job_id: int,
        coordinator: str,
        stages: Sequence[Stage],
        account: LocalAccount | None = None,
        gas: int | None = None,
    ) -> dict[str, Any]:
        """Open the committees for the stages drawn for audit (anyone may, once). With `gas`, sent
        without simulating: on a chain that mines only on demand, the block after the result may
        not exist yet when this is sent (the draw needs the result block's hash)."""
        return self._tx(self.contract.functions.drawAudits(job_id, coordinator, as_abi(stages)), 0, account, gas)

    def challenge(
        self,
        job_id: int,
        coordinator: str,
        stages: Sequence[Stage],
        stage: int,
        bond: int,
        account: LocalAccount | None = None,
    ) -> dict[str, Any]:
        """Send a stage of a completed job to a committee, with `bond` wei (>= challengeBond)."""
        return self._tx(self.contract.functions.challenge(job_id, coordinator, as_abi(stages), stage), bond, account)

    def grant_coordinator(self, who: str, account: LocalAccount | None = None) -> dict[str, Any]:
        return self.grant_role("COORDINATOR_ROLE", who, account)

    # views
    def job(self, job_id: int) -> Job:
        j = self._call(self.contract.functions.getJob(job_id))
        return Job(
            job_id,
            client=j[0],
            escrow=j[1],
            audit_bps=j[2],
            deadline=j[3],
            model_id=j[4],
            status=JobStatus(j[5]),
            route_hash=bytes(j[6]),
            coordinator_fee_bps=j[7],
        )

    def job_count(self) -> int:
        return int(self._call(self.contract.functions.jobCount()))

    def balance(self, who: str) -> tuple[int, int, int]:
        """(withdrawable now, pending, unix time when all pending is withdrawable; 0 if none)."""
        withdrawable, pending, until = self._call(self.contract.functions.balanceOf(who))
        return int(withdrawable), int(pending), int(until)

    def credit(self, who: str) -> int:
        """Wei credited to `who` (stage fees, coordinator cuts, refunds): withdrawable plus pending."""
        withdrawable, pending, _ = self.balance(who)
        return withdrawable + pending

    def terms(self) -> Terms:
        return Terms(*self._call(self.contract.functions.terms()))

    def epoch_length_s(self) -> int:
        return int(self._call(self.contract.functions.epochLength()))

    def coordinator_fee_bps(self) -> int:
        return self.terms().coordinator_fee_bps

    def receipt_digest(
        self, job_id: int, stage: int, span: Stage, coordinator: str, input_hash: bytes, output_hash: bytes
    ) -> bytes:
        fn = self.contract.functions.receiptDigest(job_id, stage, tuple(span), coordinator, input_hash, output_hash)
        return bytes(self._call(fn))
