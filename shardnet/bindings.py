"""Typed Python bindings for the contracts. Every write simulates first (a revert raises
the contract's named error from `shardnet.contract_errors`), then signs and sends."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from eth_account.signers.local import LocalAccount
from web3.contract.contract import ContractFunction
from web3.types import BlockIdentifier

from shardnet.chain import Chain
from shardnet.contract_errors import ContractRevert
from shardnet.errors import ShardnetError
from shardnet.events import Event, EventDecoder
from shardnet.protocol import (
    Account,
    Assignment,
    Audit,
    Hardware,
    Job,
    JobStatus,
    Model,
    NodeInfo,
    Receipt,
    Stage,
    Terms,
    Vote,
)
from shardnet.receipts import ReceiptDomain

ZERO_ADDRESS = "0x" + "00" * 20


def _abi(records: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Typed records (Stage, Receipt) as the plain tuples web3 encodes (it rebuilds tuples by type)."""
    return [tuple(r) for r in records]


class _Binding:
    name = ""

    def __init__(self, chain: Chain, address: str | None = None, block: BlockIdentifier = "latest"):
        self.chain = chain
        self.block = block  # every read is of the state after this block
        self.contract = chain.contract(self.name, address)
        self.address = self.contract.address
        self._decoder = EventDecoder(chain.abis)

    def _tx(
        self, fn: ContractFunction, value: int = 0, account: LocalAccount | None = None, gas: int | None = None
    ) -> dict[str, Any]:
        return self.chain.transact(fn, value=value, account=account, gas=gas)

    def _call(self, fn: ContractFunction) -> Any:
        return self.chain.call(fn, self.block)

    def grant_role(self, role_name: str, who: str, account: LocalAccount | None = None) -> dict[str, Any]:
        """Grant the contract's `role_name` constant (e.g. COORDINATOR_ROLE) to `who` (admin only)."""
        role = self._call(getattr(self.contract.functions, role_name)())
        return self._tx(self.contract.functions.grantRole(role, who), 0, account)

    def events_in(self, receipt: dict[str, Any]) -> list[Event]:
        """Decoded events of this contract in a transaction receipt."""
        return [e for e in map(self._decoder.decode, receipt["logs"]) if e is not None and e.contract == self.address]


class NodeRegistry(_Binding):
    name = "NodeRegistry"

    def register(
        self, endpoint: str, hardware: Hardware, data_key: bytes, stake: int, account: LocalAccount | None = None
    ) -> dict[str, Any]:
        return self._tx(self.contract.functions.register(endpoint, tuple(hardware), data_key), stake, account)

    def add_stake(self, amount: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.addStake(), amount, account)

    def update_profile(
        self, endpoint: str, hardware: Hardware, data_key: bytes, account: LocalAccount | None = None
    ) -> dict[str, Any]:
        return self._tx(self.contract.functions.updateProfile(endpoint, tuple(hardware), data_key), 0, account)

    def request_unstake(self, amount: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.requestUnstake(amount), 0, account)

    def withdraw_unstaked(self, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.withdrawUnstaked(), 0, account)

    def slash(self, node: str, amount: int, reason: str, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.slash(node, amount, reason), 0, account)

    def grant_slasher(self, who: str, account: LocalAccount | None = None) -> dict[str, Any]:
        return self.grant_role("SLASHER_ROLE", who, account)

    def set_parameters(
        self, min_stake: int, cooldown_s: int, treasury: str, account: LocalAccount | None = None
    ) -> dict[str, Any]:
        return self._tx(self.contract.functions.setParameters(min_stake, cooldown_s, treasury), 0, account)

    # views
    def is_active(self, node: str) -> bool:
        return bool(self._call(self.contract.functions.isActive(node)))

    def min_stake(self) -> int:
        return int(self._call(self.contract.functions.minStake()))

    def cooldown_s(self) -> int:
        """How long an unstake request waits (never less than the market's settlement horizon)."""
        return int(self._call(self.contract.functions.cooldown()))

    def node(self, node: str) -> NodeInfo:
        s = self._call(self.contract.functions.getNode(node))
        return NodeInfo(
            node,
            stake=s[0],
            unlock_at=s[1],
            registered_at=s[2],
            pending_unstake=s[3],
            jobs_failed=s[4],
            hardware=Hardware(*s[5]),
            endpoint=s[6],
            data_key=bytes(s[7]),
        )

    def nodes(self) -> list[str]:
        count = self._call(self.contract.functions.nodeCount())
        return [self._call(self.contract.functions.nodeList(i)) for i in range(count)]

    def failures(self, node: str) -> int:
        """Stages the node failed, as the market and the verifier recorded them."""
        return int(self._call(self.contract.functions.failuresOf(node)))


class ModelRegistry(_Binding):
    name = "ModelRegistry"

    def register_model(
        self,
        name: str,
        manifest_cid: str,
        block_count: int,
        blocks_root: bytes,
        price_per_block: int,
        account: LocalAccount | None = None,
    ) -> int:
        receipt = self._tx(
            self.contract.functions.registerModel(name, manifest_cid, block_count, blocks_root, price_per_block),
            0,
            account,
        )
        return int(next(e.args["modelId"] for e in self.events_in(receipt) if e.name == "ModelRegistered"))

    def deprecate_model(self, model_id: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.deprecateModel(model_id), 0, account)

    def assign_shard(
        self, model_id: int, node: str, start: int, end: int, account: LocalAccount | None = None
    ) -> dict[str, Any]:
        return self._tx(self.contract.functions.assignShard(model_id, node, start, end), 0, account)

    def confirm_shard(self, model_id: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.confirmShard(model_id), 0, account)

    def release_shard(self, model_id: int, node: str, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.releaseShard(model_id, node), 0, account)

    def grant_coordinator(self, who: str, account: LocalAccount | None = None) -> dict[str, Any]:
        return self.grant_role("COORDINATOR_ROLE", who, account)

    def grant_publisher(self, who: str, account: LocalAccount | None = None) -> dict[str, Any]:
        """Let `who` register models (admin only)."""
        return self.grant_role("PUBLISHER_ROLE", who, account)

    # views
    def model(self, model_id: int) -> Model:
        m = self._call(self.contract.functions.getModel(model_id))
        return Model(model_id, m[0], m[1], m[2], m[3], bytes(m[4]), m[5], m[6])

    def model_count(self) -> int:
        return int(self._call(self.contract.functions.modelCount()))

    def assignment(self, model_id: int, node: str) -> Assignment:
        return Assignment(*self._call(self.contract.functions.assignmentOf(model_id, node)))

    def nodes_for_block(self, model_id: int, block: int) -> list[str]:
        return list(self._call(self.contract.functions.nodesForBlock(model_id, block)))

    def assigned_nodes(self, model_id: int) -> list[str]:
        return list(self._call(self.contract.functions.assignedNodes(model_id)))


class JobMarket(_Binding):
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
        """Post a job; `audit_bps` asks for more audits than the network's minimum (0..10000)."""
        receipt = self._tx(
            self.contract.functions.postJob(model_id, input_cid, params, max_fee, deadline, audit_bps),
            max_fee,
            account,
        )
        return int(next(e.args["jobId"] for e in self.events_in(receipt) if e.name == "JobPosted"))

    def cancel_job(self, job_id: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.cancelJob(job_id), 0, account)

    def route_job(self, job_id: int, stages: list[Stage], account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.routeJob(job_id, _abi(stages)), 0, account)

    def reroute_job(
        self, job_id: int, old_coordinator: str, old: list[Stage], new: list[Stage], account: LocalAccount | None = None
    ) -> dict[str, Any]:
        """`old_coordinator` and `old` are the route being replaced, as its JobRouted event published it."""
        return self._tx(self.contract.functions.rerouteJob(job_id, old_coordinator, _abi(old), _abi(new)), 0, account)

    def submit_result(
        self,
        job_id: int,
        coordinator: str,
        stages: list[Stage],
        output_cid: str,
        receipts: list[Receipt],
        account: LocalAccount | None = None,
    ) -> dict[str, Any]:
        """`coordinator` and `stages` are the job's current route (JobRouted / JobRerouted)."""
        return self._tx(
            self.contract.functions.submitResult(job_id, coordinator, _abi(stages), output_cid, _abi(receipts)),
            0,
            account,
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
        fn = self.contract.functions.claimDelivery(job_id, coordinator, _abi(stages), stage, tuple(receipt))
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
        return self._tx(self.contract.functions.expireJob(job_id, coordinator, _abi(stages)), 0, account)

    def claim_window_s(self) -> int:
        return int(self._call(self.contract.functions.CLAIM_WINDOW()))

    def abort_job(
        self, job_id: int, coordinator: str, stages: list[Stage], reason: str, account: LocalAccount | None = None
    ) -> dict[str, Any]:
        return self._tx(self.contract.functions.abortJob(job_id, coordinator, _abi(stages), reason), 0, account)

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
        return self._tx(self.contract.functions.drawAudits(job_id, coordinator, _abi(stages)), 0, account, gas)

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
        return self._tx(self.contract.functions.challenge(job_id, coordinator, _abi(stages), stage), bond, account)

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


async def send_logged(
    log: logging.Logger, what: str, fn: Callable[..., dict[str, Any]], *args: Any, account: LocalAccount
) -> dict[str, Any] | None:
    """Run a binding's write off the event loop for a long-lived agent: a refusal or a failed
    transaction is logged and returns None, never raised (agents must not crash on them)."""
    try:
        return await asyncio.to_thread(fn, *args, account=account)
    except ContractRevert as exc:
        log.warning("%s refused by the contract: %s", what, exc)
    except ShardnetError as exc:
        log.error("%s failed: %s", what, exc)
    return None


class Verifier(_Binding):
    name = "Verifier"

    def commit(self, audit_id: int, commitment: bytes, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.commit(audit_id, commitment), 0, account)

    def reveal(
        self,
        audit_id: int,
        vote: Vote,
        salt: bytes,
        account: LocalAccount | None = None,
        gas: int | None = None,
    ) -> dict[str, Any]:
        """With `gas`, sent without simulating (the reveal may open by the chain's clock)."""
        return self._tx(self.contract.functions.reveal(audit_id, int(vote), salt), 0, account, gas)

    def resolve(self, audit_id: int, account: LocalAccount | None = None, gas: int | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.resolve(audit_id), 0, account, gas)

    def withdraw(self, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.withdraw(), 0, account)

    def set_penalties(
        self,
        min_slash: int,
        slash_multiple: int,
        member_penalty: int,
        challenge_bond: int,
        account: LocalAccount | None = None,
    ) -> dict[str, Any]:
        fn = self.contract.functions.setPenalties((min_slash, slash_multiple, member_penalty, challenge_bond))
        return self._tx(fn, 0, account)

    # views
    def audit(self, audit_id: int) -> Audit:
        a = self._call(self.contract.functions.getAudit(audit_id))
        c = a[0]
        return Audit(audit_id, c[0], c[1], c[2], c[3], c[4], c[5], c[6], *a[1:])

    def audit_count(self) -> int:
        return int(self._call(self.contract.functions.auditCount()))

    def members(self, audit_id: int) -> list[str]:
        return list(self._call(self.contract.functions.membersOf(audit_id)))

    def ballot(self, audit_id: int, member: str) -> tuple[bytes, Vote]:
        commitment, vote = self._call(self.contract.functions.ballotOf(audit_id, member))
        return bytes(commitment), Vote(vote)

    def commitment(self, audit_id: int, member: str, vote: Vote, salt: bytes) -> bytes:
        return bytes(self._call(self.contract.functions.commitmentOf(audit_id, member, int(vote), salt)))

    def credit(self, who: str) -> int:
        return int(self._call(self.contract.functions.credit(who)))

    def penalties(self) -> tuple[int, int, int, int]:
        """(minSlash, slashMultiple, memberPenalty, challengeBond)."""
        p = self._call(self.contract.functions.penalties())
        return int(p[0]), int(p[1]), int(p[2]), int(p[3])

    def challenge_bond(self) -> int:
        return int(self._call(self.contract.functions.challengeBond()))


class Contracts:
    """The bindings of one deployment. Reads are of the latest state, or of the state after
    `block` (an audit compares events up to a block with the state at that same block)."""

    def __init__(self, chain: Chain, block: BlockIdentifier = "latest"):
        self.chain = chain
        self.block = block
        self.nodes = NodeRegistry(chain, block=block)
        self.models = ModelRegistry(chain, block=block)
        self.market = JobMarket(chain, block=block)
        self.verifier = Verifier(chain, block=block)

    def withdraw_all(self, who: str, account: LocalAccount | None = None) -> dict[str, int]:
        """Send `who` (signing as `account`) everything withdrawable: from the market (refunds, and
        fees past their audit window) and from the verifier (committee pay, bonds, rewards).
        Returns the wei sent, by contract ("market", "verifier")."""
        sent: dict[str, int] = {}
        if (credit := self.market.balance(who)[0]) != 0:
            self.market.withdraw(account=account)
            sent["market"] = credit
        if (credit := self.verifier.credit(who)) != 0:
            self.verifier.withdraw(account=account)
            sent["verifier"] = credit
        return sent

    def account(self, who: str) -> Account:
        """What the chain holds for an account: its balance in the market and, for a node, its
        failed stages in the node registry."""
        withdrawable, pending, until = self.market.balance(who)
        return Account(withdrawable, pending, until, self.nodes.failures(who))
