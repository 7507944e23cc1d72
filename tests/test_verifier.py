"""Verifier on the real Anvil: audits drawn from the result block's hash, committees of other
staked nodes, commit-reveal, the majority's verdict and its consequences (slash, take-back,
refund, committee pay, outvoted and absent members), challenges with bonds, and every custom
error. ETH is accounted to the wei in every case."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import pytest
from web3.exceptions import ContractLogicError

from shardnet import contract_errors
from shardnet.audits import audited_stages, stages_of
from shardnet.chain import dev_account
from shardnet.protocol import Stage, Vote
from shardnet.scenario import ETHER, World
from tests.helpers import reverts

FEE_PER_BLOCK = 10**12
MAX_FEE = 10**16
CLIENT = dev_account(12)
DRAW_GAS = 3_000_000


@dataclass
class Net:
    w: World
    nodes: list
    model: int
    stages: list[Stage]

    @property
    def market(self):
        return self.w.contracts.market

    @property
    def verifier(self):
        return self.w.contracts.verifier

    def completed(self, audit_bps: int = 10_000) -> int:
        job = self.w.post(self.model, CLIENT, MAX_FEE, audit_bps=audit_bps)
        self.market.route_job(job, self.stages, account=self.w.coordinator)
        receipts = self.w.receipts(job, self.stages, "QmOut")
        self.market.submit_result(
            job, self.w.coordinator.address, self.stages, "QmOut", receipts, account=self.nodes[2]
        )
        return job

    def draw(self, job: int) -> list[int]:
        """Open the job's audits; returns their ids, by stage."""
        first = self.verifier.audit_count() + 1
        self.market.draw_audits(job, self.w.coordinator.address, self.stages, account=self.w.admin, gas=DRAW_GAS)
        return list(range(first, self.verifier.audit_count() + 1))

    def vote(self, audit: int, votes: dict[str, Vote], absent: tuple[str, ...] = ()) -> None:
        """Every member in `votes` commits; all but the `absent` reveal."""
        salts = {}
        for member, vote in votes.items():
            salts[member] = os.urandom(32)
            sealed = self.verifier.commitment(audit, member, vote, salts[member])
            self.verifier.commit(audit, sealed, account=self.w.account_of(member))
        for member, vote in votes.items():
            if member not in absent:
                self.verifier.reveal(audit, vote, salts[member], account=self.w.account_of(member))


@pytest.fixture
def net(world: World) -> Net:
    nodes = world.register_nodes(5)  # three serve the route; every node but a stage's own may judge it
    model = world.register_model(6, price_per_block=FEE_PER_BLOCK)
    spans = world.assign_even(model, nodes[:3], 6)
    return Net(world, nodes, model, world.stages(nodes[:3], spans, FEE_PER_BLOCK))


def balances_hold(n: Net, people: list[str]) -> None:
    w3 = n.w.chain.w3
    audits = [n.verifier.audit(a) for a in range(1, n.verifier.audit_count() + 1)]
    held = sum(a.budget for a in audits if not a.resolved) + sum(n.verifier.credit(p) for p in people)
    assert w3.eth.get_balance(n.verifier.address) == held


def everyone(n: Net) -> list[str]:
    return [a.address for a in n.nodes] + [CLIENT.address, n.w.coordinator.address, n.w.admin.address]


def test_the_draw_is_the_result_blocks_hash_and_python_agrees(net):
    job = net.completed(audit_bps=5_000)
    j = net.market.job(job)
    block_hash = bytes(net.w.chain.w3.eth.get_block(j.result_block)["hash"])
    net.w.advance(1)  # a later block exists: the view can read the result block's hash
    assert net.market.audited_stages(job, 3) == audited_stages(block_hash, job, 3, 5_000)
    every = net.completed(audit_bps=10_000)
    ids = net.draw(every)
    assert [net.verifier.audit(a).stage for a in ids] == [0, 1, 2]
    with reverts("AlreadyDrawn", jobId=every):
        net.market.draw_audits(every, net.w.coordinator.address, net.stages, account=net.w.admin)
    for a in ids:
        audit = net.verifier.audit(a)
        members = net.verifier.members(a)
        assert len(members) == 3 and audit.node not in members and len(set(members)) == 3
        # the budget came out of the client's reserve: committee x verify fee x the stage's fee
        terms = net.market.terms()
        assert audit.budget == audit.fee * terms.committee_size * terms.verify_fee_bps // 10_000
    late = net.completed()
    net.w.advance(net.market.terms().challenge_window + 1)
    with reverts("AuditWindowClosed", jobId=late):
        net.market.draw_audits(late, net.w.coordinator.address, net.stages, account=net.w.admin)
    assert stages_of(0b101) == [0, 2]


def test_nothing_to_draw_without_audits(net):
    admin = net.w.admin
    net.market.set_terms(replace(net.market.terms(), min_audit_bps=0), account=admin)
    job = net.completed(audit_bps=0)
    net.w.advance(1)
    with reverts("NothingDrawn", jobId=job):
        net.market.draw_audits(job, net.w.coordinator.address, net.stages, account=admin)
    # and an unaudited job keeps no reserve: the client has its change at once
    paid = sum(s.fee for s in net.stages)
    assert net.market.balance(CLIENT.address)[1] == 0
    assert (
        net.market.balance(CLIENT.address)[0]
        == MAX_FEE - paid - paid * net.market.terms().coordinator_fee_bps // 10_000
    )


def test_a_stage_found_wrong_is_slashed_its_fee_refunded_and_the_committee_paid(net):
    job = net.completed()
    audit_id = net.draw(job)[0]  # stage 0
    audit = net.verifier.audit(audit_id)
    members = net.verifier.members(audit_id)
    cheat = audit.node
    stake = net.w.contracts.nodes.node(cheat).stake
    pending = net.market.balance(cheat)[1]
    client_before = net.market.balance(CLIENT.address)
    net.vote(audit_id, {members[0]: Vote.WRONG, members[1]: Vote.WRONG, members[2]: Vote.CORRECT})
    receipt = net.verifier.resolve(audit_id, account=dev_account(19))  # anyone; early, as all revealed
    names = [e.name for e in net.verifier.events_in(receipt)]
    assert names.count("AuditResolved") == 1 and "MemberOutvoted" in names
    min_slash, multiple, penalty, _ = net.verifier.penalties()
    slash = max(min_slash, audit.fee * multiple)
    assert net.w.contracts.nodes.node(cheat).stake == stake - slash
    assert net.w.contracts.nodes.node(members[2]).stake == ETHER - penalty  # outvoted
    assert net.market.balance(cheat)[1] == pending - audit.fee  # its fee taken back
    cut = audit.fee * net.market.terms().coordinator_fee_bps // 10_000
    assert net.market.balance(CLIENT.address)[0] == client_before[0] + audit.fee + cut  # refunded at once
    share = audit.budget // audit.size
    assert [net.verifier.credit(m) for m in members] == [share, share, 0]
    assert net.verifier.audit(audit_id).upheld
    balances_hold(net, everyone(net))
    with reverts("AlreadyResolved", auditId=audit_id):
        net.verifier.resolve(audit_id, account=dev_account(19))
    # the members withdraw their pay
    before = net.w.chain.w3.eth.get_balance(members[0])
    r = net.verifier.withdraw(account=net.w.account_of(members[0]))
    assert net.w.chain.w3.eth.get_balance(members[0]) == before + share - r["gasUsed"] * r["effectiveGasPrice"]


def test_a_stage_found_right_stands_and_absent_members_are_recorded_failed(net):
    job = net.completed()
    audit_id = net.draw(job)[1]
    members = net.verifier.members(audit_id)
    audit = net.verifier.audit(audit_id)
    client_reserve = net.market.balance(CLIENT.address)
    votes = {members[0]: Vote.CORRECT, members[1]: Vote.WRONG, members[2]: Vote.CORRECT}
    net.vote(audit_id, votes, absent=(members[2],))  # commits, never reveals
    with reverts("NotResolvable", auditId=audit_id):
        net.verifier.resolve(audit_id, account=dev_account(19))
    net.w.advance(net.market.terms().commit_period + net.market.terms().reveal_period + 1)
    net.verifier.resolve(audit_id, account=dev_account(19), gas=1_500_000)
    resolved = net.verifier.audit(audit_id)
    assert not resolved.upheld  # a tie does not convict
    assert net.w.contracts.nodes.failures(members[2]) == 1
    assert net.w.contracts.nodes.node(members[1]).stake < ETHER  # outvoted
    assert net.w.contracts.nodes.node(audit.node).stake == ETHER  # the stage stands
    share = audit.budget // audit.size
    assert net.verifier.credit(members[0]) == share
    # the shares nobody earned go back to the client
    assert net.verifier.credit(CLIENT.address) == audit.budget - share
    assert net.market.balance(CLIENT.address) == client_reserve
    balances_hold(net, everyone(net))


def test_commit_reveal_rules(net):
    job = net.completed()
    audit_id = net.draw(job)[2]
    members = net.verifier.members(audit_id)
    stranger = net.nodes[2] if net.nodes[2].address not in members else dev_account(19)
    with reverts("NotMember", auditId=audit_id):
        net.verifier.commit(audit_id, b"\1" * 32, account=stranger)
    salt = b"\2" * 32
    me = net.w.account_of(members[0])
    net.verifier.commit(audit_id, net.verifier.commitment(audit_id, me.address, Vote.CORRECT, salt), account=me)
    with reverts("AlreadyCommitted", auditId=audit_id):
        net.verifier.commit(audit_id, b"\1" * 32, account=me)
    with reverts("RevealNotOpen", auditId=audit_id):  # not everyone committed, the period is not over
        net.verifier.reveal(audit_id, Vote.CORRECT, salt, account=me)
    with reverts("InvalidVote"):
        net.verifier.reveal(audit_id, Vote.NONE, salt, account=me)
    net.w.advance(net.market.terms().commit_period + 1)
    late = net.w.account_of(members[1])
    with reverts("CommitClosed", auditId=audit_id):
        net.verifier.commit(audit_id, b"\1" * 32, account=late)
    with reverts("NoCommitment", auditId=audit_id):
        net.verifier.reveal(audit_id, Vote.CORRECT, salt, account=late)
    with reverts("RevealMismatch", auditId=audit_id):  # a vote other than the one committed
        net.verifier.reveal(audit_id, Vote.WRONG, salt, account=me)
    net.verifier.reveal(audit_id, Vote.CORRECT, salt, account=me)
    with reverts("AlreadyRevealed", auditId=audit_id):
        net.verifier.reveal(audit_id, Vote.CORRECT, salt, account=me)
    net.w.advance(net.market.terms().reveal_period + 1)
    with reverts("RevealClosed", auditId=audit_id):
        net.verifier.reveal(audit_id, Vote.CORRECT, salt, account=me)
    with reverts("UnknownAudit", auditId=999):
        net.verifier.resolve(999)


def test_challenges_with_a_bond(net):
    net.market.set_terms(replace(net.market.terms(), min_audit_bps=0), account=net.w.admin)
    job = net.completed(audit_bps=0)
    coord, bond = net.w.coordinator.address, net.verifier.challenge_bond()
    with reverts("BondTooSmall", sent=bond - 1, bond=bond):
        net.market.challenge(job, coord, net.stages, 1, bond - 1, account=CLIENT)
    with reverts("NoSuchStage", stage=3):
        net.market.challenge(job, coord, net.stages, 3, bond, account=CLIENT)
    # a challenge that fails: the bond pays the committee, the rest goes to the wrongly accused node
    first = net.verifier.audit_count() + 1
    net.market.challenge(job, coord, net.stages, 1, bond, account=CLIENT)
    with reverts("AlreadyUnderAudit", jobId=job, stage=1):
        net.market.challenge(job, coord, net.stages, 1, bond, account=dev_account(13))
    members = net.verifier.members(first)
    net.vote(first, dict.fromkeys(members, Vote.CORRECT))
    net.verifier.resolve(first)
    share = bond // 3
    assert [net.verifier.credit(m) for m in members] == [share] * 3
    assert net.verifier.credit(net.stages[1].node) == bond - 3 * share
    # a challenge upheld: the challenger gets its bond back twice over, from the slash
    second = first + 1
    challenger = dev_account(13)
    net.market.challenge(job, coord, net.stages, 2, bond, account=challenger)
    net.vote(second, dict.fromkeys(net.verifier.members(second), Vote.WRONG))
    net.verifier.resolve(second)
    assert net.verifier.credit(challenger.address) == 2 * bond
    assert net.verifier.audit(second).upheld
    balances_hold(net, [*everyone(net), challenger.address])
    net.w.advance(net.market.terms().challenge_window + 1)
    with reverts("AuditWindowClosed", jobId=job):
        net.market.challenge(job, coord, net.stages, 0, bond, account=CLIENT)


def test_only_the_market_opens_audits_and_only_the_verifier_takes_fees_back(net):
    case = (1, 0, net.nodes[0].address, 1, CLIENT.address, CLIENT.address, CLIENT.address)
    with reverts("NotMarket", caller=CLIENT.address):
        net.w.chain.transact(net.verifier.contract.functions.open(case, b"\0" * 32), account=CLIENT)
    with reverts("NotVerifier", caller=CLIENT.address):
        net.w.chain.transact(net.market.contract.functions.revoke(case), account=CLIENT)
    with reverts("VerifierAlreadySet"):
        net.w.chain.transact(net.market.contract.functions.setVerifier(CLIENT.address), account=net.w.admin)
    with pytest.raises(ContractLogicError) as refused:  # it takes ETH only from slashes
        net.w.chain.w3.eth.call({"from": CLIENT.address, "to": net.verifier.address, "value": 1})
    assert isinstance(net.w.chain.decode_error(refused.value), contract_errors.NotNodeRegistry)
