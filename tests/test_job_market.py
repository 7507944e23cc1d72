"""JobMarket on the real Anvil: post, route, reroute, submit, expire, cancel, withdraw, and every
custom error (forged and replayed receipts, incomplete covers, double submits, reentrancy)."""

from dataclasses import dataclass, replace

import pytest
from eth_utils import keccak

from shardnet.chain import dev_account
from shardnet.protocol import JobStatus, Receipt, Stage
from shardnet.receipts import output_hash_of
from shardnet.scenario import ETHER, World
from tests.helpers import deploy_attacker, reverts

COORD = dev_account(1).address  # the devnet coordinator, who routes every job here
FEE_PER_BLOCK = 10**12
MAX_FEE = 10**15
CLIENT = 12


@dataclass
class Setup:
    world: World
    nodes: list
    model: int
    spans: list
    client: object

    @property
    def market(self):
        return self.world.contracts.market

    def stages(self, fee=FEE_PER_BLOCK):
        return self.world.stages(self.nodes, self.spans, fee)

    def post(self, max_fee=MAX_FEE, ttl=3600):
        return self.world.post(self.model, self.client, max_fee, ttl)

    def routed(self, max_fee=MAX_FEE, ttl=3600):
        job = self.post(max_fee, ttl)
        stages = self.stages()
        self.market.route_job(job, stages, account=self.world.coordinator)
        return job, stages


@pytest.fixture
def s(world):
    nodes = world.register_nodes(3)
    model = world.register_model(6, price_per_block=FEE_PER_BLOCK)
    spans = world.assign_even(model, nodes, 6)
    return Setup(world, nodes, model, spans, dev_account(CLIENT))


def test_full_job_pays_each_stage_after_its_audit_window_and_refunds_rest(s):
    job, stages = s.routed()
    assert s.market.job(job).status == JobStatus.ROUTED
    receipts = s.world.receipts(job, stages, "QmOutput")
    receipt = s.market.submit_result(job, COORD, stages, "QmOutput", receipts, account=s.nodes[-1])
    names = [e.name for e in s.market.events_in(receipt)]
    assert names == ["ResultSubmitted"]  # one event settles it: the route says who is paid what
    paid = sum(st.fee for st in stages)
    terms = s.market.terms()
    cut = paid * terms.coordinator_fee_bps // 10_000
    reserve = paid * terms.committee_size * terms.verify_fee_bps // 10_000  # the network audits every job
    # fees and the cut are pending: nothing is withdrawable before the audit window is over
    for st in stages:
        acct = s.world.contracts.account(st.node)
        assert (acct.credit, acct.pending, acct.jobs_failed) == (0, st.fee, 0)
        with reverts("NothingToWithdraw", account=st.node):
            s.market.withdraw(account=s.world.account_of(st.node))
    assert s.world.contracts.account(s.world.coordinator.address).pending == cut
    client = s.world.contracts.account(s.client.address)
    assert (client.credit, client.pending) == (MAX_FEE - paid - cut - reserve, reserve)
    j = s.market.job(job)
    assert (j.status, j.held, j.result_block) == (JobStatus.COMPLETED, 0, receipt["blockNumber"])
    epoch = s.market.epoch_length_s()
    s.world.advance(epoch)  # one epoch on: still pending unless the job landed right at an epoch's end
    assert s.world.contracts.account(stages[0].node).pending in (0, stages[0].fee)
    s.world.advance(epoch)
    assert s.world.contracts.account(stages[0].node).credit == stages[0].fee
    assert s.world.contracts.account(s.client.address).credit == MAX_FEE - paid - cut
    # every payee withdraws exactly its credit
    w3 = s.world.chain.w3
    for acct in s.nodes:
        before = w3.eth.get_balance(acct.address)
        r = s.market.withdraw(account=acct)
        fee = next(st.fee for st in stages if st.node == acct.address)
        assert w3.eth.get_balance(acct.address) == before + fee - r["gasUsed"] * r["effectiveGasPrice"]
    assert w3.eth.get_balance(s.market.address) == cut + MAX_FEE - paid - cut


def test_digest_matches_local_eip712(s):
    from eth_account.messages import encode_typed_data

    from shardnet.receipts import RECEIPT_TYPES

    coordinator = s.world.coordinator.address
    msg = {
        "jobId": 7,
        "stage": 1,
        "start": 2,
        "end": 4,
        "fee": 5,
        "coordinator": coordinator,
        "inputHash": b"\1" * 32,
        "outputHash": b"\2" * 32,
    }
    local = encode_typed_data(s.market.receipts.as_dict(), RECEIPT_TYPES, msg)
    digest = keccak(b"\x19" + local.version + local.header + local.body)
    stage = Stage(s.nodes[1].address, 2, 4, 5)
    assert s.market.receipt_digest(7, 1, stage, coordinator, b"\1" * 32, b"\2" * 32) == digest


def test_cancel_before_routing(s):
    job = s.post()
    s.market.cancel_job(job, account=s.client)
    assert s.market.job(job).status == JobStatus.CANCELLED
    assert s.world.contracts.account(s.client.address).credit == MAX_FEE
    other = s.post()
    with reverts("NotClient", jobId=other, caller=dev_account(13).address):
        s.market.cancel_job(other, account=dev_account(13))
    with reverts("WrongStatus", jobId=job, have=JobStatus.CANCELLED, need=JobStatus.POSTED):
        s.market.cancel_job(job, account=s.client)


def test_expire_pays_stages_that_proved_delivery_and_blames_the_rest(s):
    job, stages = s.routed(ttl=100)
    receipts = s.world.receipts(job, stages, "QmOut")
    with reverts("DeadlineNotPassed", jobId=job):
        s.market.claim_delivery(job, COORD, stages, 0, receipts[0], account=s.nodes[0])
    with reverts("DeadlineNotPassed", jobId=job):
        s.market.expire_job(job, COORD, stages, account=dev_account(13))
    s.world.advance(200)
    s.market.claim_delivery(job, COORD, stages, 0, receipts[0], account=s.nodes[0])  # stage 0 delivered
    s.market.claim_delivery(job, COORD, stages, 1, receipts[1], account=dev_account(13))  # anyone may send it
    with reverts("AlreadyClaimed", jobId=job, stage=1):
        s.market.claim_delivery(job, COORD, stages, 1, receipts[1], account=s.nodes[1])
    with reverts("InvalidReceiptSigner", jobId=job, stage=2):  # stage 1's receipt does not prove stage 2
        s.market.claim_delivery(job, COORD, stages, 2, receipts[1], account=s.nodes[1])
    with reverts("NoSuchStage", jobId=job, stage=3):
        s.market.claim_delivery(job, COORD, stages, 3, receipts[1], account=s.nodes[1])
    with reverts("ClaimWindowOpen", jobId=job):  # a stranger cannot expire it before stages could claim
        s.market.expire_job(job, COORD, stages, account=dev_account(13))
    s.world.advance(s.market.claim_window_s())
    with reverts("ClaimWindowClosed", jobId=job):
        s.market.claim_delivery(job, COORD, stages, 2, receipts[2], account=s.nodes[2])
    receipt = s.market.expire_job(job, COORD, stages, account=dev_account(13))
    expired = [e for e in s.market.events_in(receipt) if e.name == "JobExpired"][0]
    assert expired.args["failedNodes"] == [stages[2].node]
    paid = stages[0].fee + stages[1].fee
    assert [s.market.credit(st.node) for st in stages] == [stages[0].fee, stages[1].fee, 0]
    assert s.market.credit(s.client.address) == MAX_FEE - paid  # the client pays for delivered stages only
    assert [s.world.contracts.account(st.node).jobs_failed for st in stages] == [0, 0, 1]
    with reverts("WrongStatus", have=JobStatus.EXPIRED):
        s.market.expire_job(job, COORD, stages, account=dev_account(13))


def test_a_stranger_cannot_choose_whom_an_expiry_blames(s):
    """Expiring with no claims blames every stage only because none proved delivery; a caller
    cannot leave out receipts that were claimed."""
    job, stages = s.routed(ttl=100)
    receipts = s.world.receipts(job, stages, "QmOut")
    s.world.advance(200)
    for k in range(3):
        s.market.claim_delivery(job, COORD, stages, k, receipts[k], account=s.nodes[k])
    s.world.advance(s.market.claim_window_s())
    receipt = s.market.expire_job(job, COORD, stages, account=dev_account(13))
    expired = [e for e in s.market.events_in(receipt) if e.name == "JobExpired"][0]
    assert expired.args["failedNodes"] == []
    assert [s.world.contracts.account(st.node).jobs_failed for st in stages] == [0, 0, 0]


def test_expire_posted_job(s):
    job = s.post(ttl=50)
    s.world.advance(100)
    s.market.expire_job(job, account=dev_account(13))
    assert s.market.job(job).status == JobStatus.EXPIRED
    assert s.world.contracts.account(s.client.address).credit == MAX_FEE


def test_reroute_replaces_failed_stage(s):
    job, stages = s.routed()
    spare = s.world.register_nodes(4)[3]
    s.world.contracts.models.assign_shard(s.model, spare.address, 2, 4, account=s.world.coordinator)
    s.world.contracts.models.confirm_shard(s.model, account=spare)
    new = [stages[0], stages[1]._replace(node=spare.address), stages[2]]
    receipt = s.market.reroute_job(job, COORD, stages, new, account=s.world.coordinator)
    [event] = [e for e in s.market.events_in(receipt) if e.name == "JobRerouted"]
    assert event.args["failedNodes"] == [stages[1].node]
    assert s.world.contracts.account(stages[1].node).jobs_failed == 1
    with reverts("RouteMismatch", jobId=job):  # the old route is no longer valid
        s.market.submit_result(job, COORD, stages, "QmO", s.world.receipts(job, stages, "QmO"), account=spare)
    s.market.submit_result(job, COORD, new, "QmO", s.world.receipts(job, new, "QmO"), account=spare)
    assert s.market.credit(spare.address) == new[1].fee


def test_forged_receipt_wrong_signer(s):
    job, stages = s.routed()
    signers = [s.nodes[0], dev_account(13), s.nodes[2]]
    receipts = s.world.receipts(job, stages, "QmO", signers=signers)
    with reverts(
        "InvalidReceiptSigner", jobId=job, stage=1, expected=stages[1].node, recovered=dev_account(13).address
    ):
        s.market.submit_result(job, COORD, stages, "QmO", receipts, account=s.nodes[2])


def test_receipt_replayed_on_another_job(s):
    job_a, stages = s.routed()
    job_b = s.post()
    s.market.route_job(job_b, stages, account=s.world.coordinator)
    receipts_a = s.world.receipts(job_a, stages, "QmO")
    with reverts("InvalidReceiptSigner", jobId=job_b, stage=0):
        s.market.submit_result(job_b, COORD, stages, "QmO", receipts_a, account=s.nodes[2])


def test_incomplete_cover_and_route_errors(s):
    job = s.post()
    st = s.stages()
    coord = s.world.coordinator
    with reverts("IncompleteCover", jobId=job, stage=2, expectedStart=6, start=4):
        s.market.route_job(job, st[:2], account=coord)  # covers [0, 4) of 6 blocks
    with reverts("IncompleteCover", jobId=job, stage=1, expectedStart=2, start=4):
        s.market.route_job(job, [st[0], st[2]], account=coord)  # gap
    with reverts("EmptyRoute", jobId=job):
        s.market.route_job(job, [], account=coord)
    with reverts("SpanNotConfirmed", node=st[1].node, start=2, end=6):
        s.market.route_job(job, [st[0], st[1]._replace(end=6)], account=coord)
    with reverts("StageFeeMismatch", stage=0, fee=1, price=2 * FEE_PER_BLOCK):
        s.market.route_job(job, [st[0]._replace(fee=1), *st[1:]], account=coord)
    # a coordinator cannot price a stage: 95% of the escrow to its own node is refused
    with reverts("StageFeeMismatch", stage=0, fee=MAX_FEE * 95 // 100, price=2 * FEE_PER_BLOCK):
        s.market.route_job(job, [st[0]._replace(fee=MAX_FEE * 95 // 100), *st[1:]], account=coord)
    short = s.post(max_fee=6 * FEE_PER_BLOCK)  # covers the stage fees, not the coordinator's cut
    with reverts("FeeExceedsEscrow", jobId=short):
        s.market.route_job(short, st, account=coord)
    with reverts("AccessControlUnauthorizedAccount", account=s.nodes[0].address):
        s.market.route_job(job, st, account=s.nodes[0])
    with reverts("UnknownJob", jobId=999):
        s.market.route_job(999, st, account=coord)


def test_inactive_node_cannot_be_routed(s):
    job = s.post()
    s.world.contracts.nodes.request_unstake(ETHER, account=s.nodes[1])
    with reverts("NodeNotActive", node=s.nodes[1].address):
        s.market.route_job(job, s.stages(), account=s.world.coordinator)


def test_double_submit(s):
    job, stages = s.routed()
    receipts = s.world.receipts(job, stages, "QmO")
    s.market.submit_result(job, COORD, stages, "QmO", receipts, account=s.nodes[2])
    with reverts("WrongStatus", jobId=job, have=JobStatus.COMPLETED, need=JobStatus.ROUTED):
        s.market.submit_result(job, COORD, stages, "QmO", receipts, account=s.nodes[2])


def test_submit_errors(s):
    job, stages = s.routed(ttl=500)
    good = s.world.receipts(job, stages, "QmO")
    with reverts("ReceiptCountMismatch", receipts=2, stages=3):
        s.market.submit_result(job, COORD, stages, "QmO", good[:2], account=s.nodes[2])
    with reverts("RouteMismatch", jobId=job):
        s.market.submit_result(
            job, COORD, [stages[0]._replace(fee=stages[0].fee + 1), *stages[1:]], "QmO", good, account=s.nodes[2]
        )
    with reverts("OutputHashMismatch", jobId=job):
        s.market.submit_result(job, COORD, stages, "QmOther", good, account=s.nodes[2])
    broken = list(good)
    broken[1] = s.market.receipts.sign(
        s.nodes[1], job, 1, stages[1], COORD, keccak(text="not what stage 0 sent"), good[1].output_hash
    )
    with reverts("BrokenReceiptChain", jobId=job, stage=1):
        s.market.submit_result(job, COORD, stages, "QmO", broken, account=s.nodes[2])
    garbage = [Receipt(r.input_hash, r.output_hash, b"\x00" * 65) for r in good]
    with reverts("InvalidReceiptSigner", stage=0):
        s.market.submit_result(job, COORD, stages, "QmO", garbage, account=s.nodes[2])
    s.world.advance(600)
    with reverts("DeadlinePassed", jobId=job):
        s.market.submit_result(job, COORD, stages, "QmO", good, account=s.nodes[2])
    with reverts("DeadlinePassed", jobId=job):
        s.market.reroute_job(job, COORD, stages, stages, account=s.world.coordinator)


def test_post_errors(s):
    m, w3 = s.market, s.world.chain.w3
    deadline = w3.eth.get_block("latest")["timestamp"] + 100
    post = m.contract.functions.postJob

    def call(*args):
        return post(*args, 0)

    tx = s.world.chain.transact
    with reverts("InvalidParameter", name="auditBps"):
        tx(post(s.model, "Qm", b"", 5, deadline, 10_001), value=5, account=s.client)
    with reverts("EscrowMismatch", sent=5, maxFee=6):
        tx(call(s.model, "Qm", b"", 6, deadline), value=5, account=s.client)
    with reverts("ZeroFee"):
        tx(call(s.model, "Qm", b"", 0, deadline), value=0, account=s.client)
    with reverts("EmptyInputCid"):
        tx(call(s.model, "", b"", 5, deadline), value=5, account=s.client)
    with reverts("BadDeadline", deadline=deadline - 200):
        tx(call(s.model, "Qm", b"", 5, deadline - 200), value=5, account=s.client)
    with reverts("BadDeadline", deadline=deadline + 10**7):
        tx(call(s.model, "Qm", b"", 5, deadline + 10**7), value=5, account=s.client)
    with reverts("UnknownModel", modelId=77):
        tx(call(77, "Qm", b"", 5, deadline), value=5, account=s.client)
    huge = 2**80
    w3.provider.make_request("anvil_setBalance", [s.client.address, hex(2 * huge)])
    with reverts("FeeTooLarge", maxFee=huge):
        tx(call(s.model, "Qm", b"", huge, deadline), value=huge, account=s.client)


def test_terms_and_withdraw_errors(s):
    admin = s.world.admin
    terms = s.market.terms()
    with reverts("InvalidParameter", name="coordinatorFeeBps"):
        s.market.set_terms(replace(terms, coordinator_fee_bps=5000), account=admin)
    with reverts("InvalidParameter", name="maxJobDuration"):
        s.market.set_terms(replace(terms, max_job_duration=0), account=admin)
    with reverts("InvalidParameter", name="committeeSize"):
        s.market.set_terms(replace(terms, committee_size=0), account=admin)
    with reverts("InvalidParameter"):  # an audit must settle before the fees it may take back are paid out
        s.market.set_terms(replace(terms, challenge_window=s.market.epoch_length_s()), account=admin)
    with reverts("AccessControlUnauthorizedAccount"):
        s.market.set_terms(terms, account=s.client)
    s.market.set_terms(replace(terms, coordinator_fee_bps=100, max_job_duration=1000), account=admin)
    assert s.market.coordinator_fee_bps() == 100
    with reverts("NothingToWithdraw", account=dev_account(13).address):
        s.market.withdraw(account=dev_account(13))


def _as_attacker(s, attacker, fn, value=0):
    data = fn._encode_transaction_data()
    return s.world.chain.transact(attacker.functions.exec(s.market.address, data), value=value)


@pytest.mark.parametrize("mode", [0, 1], ids=["reentrant", "rejecting"])
def test_reentrant_or_rejecting_withdraw_loses_nothing(s, mode):
    attacker = deploy_attacker(s.world.chain)
    s.world.chain.transact(attacker.functions.setMode(mode))
    deadline = s.world.chain.w3.eth.get_block("latest")["timestamp"] + 100
    fns = s.market.contract.functions
    _as_attacker(s, attacker, fns.postJob(s.model, "Qm", b"", MAX_FEE, deadline, 0), value=MAX_FEE)
    job = s.market.job_count()
    _as_attacker(s, attacker, fns.cancelJob(job))
    assert s.world.contracts.account(attacker.address).credit == MAX_FEE
    balance = s.world.chain.w3.eth.get_balance(s.market.address)
    with reverts("TransferFailed", to=attacker.address, amount=MAX_FEE):
        _as_attacker(s, attacker, fns.withdraw())
    assert s.world.contracts.account(attacker.address).credit == MAX_FEE
    assert s.world.chain.w3.eth.get_balance(s.market.address) == balance


def test_stage_is_the_abi_tuple():
    st = Stage("0x" + "11" * 20, 0, 2, 5)
    assert tuple(st) == ("0x" + "11" * 20, 0, 2, 5) and st.fee == 5
    assert output_hash_of("QmX") == keccak(text="QmX")


def test_abort_of_a_routed_job_refunds_client_without_blaming_nodes_when_no_stage_delivered(s):
    """Stage 0 gives up on the input: the job is aborting, open to delivery claims for the claim
    window; nobody claimed, so the client gets all its escrow back and nobody is recorded failed."""
    job, stages = s.routed()
    with reverts("NotOnRoute", jobId=job, caller=dev_account(13).address):
        s.market.abort_job(job, COORD, stages, "nope", account=dev_account(13))
    receipt = s.market.abort_job(job, COORD, stages, "input is not valid JSON", account=s.nodes[0])
    [event] = [e for e in s.market.events_in(receipt) if e.name == "JobAborted"]
    assert event.args["reason"] == "input is not valid JSON" and event.args["by"] == s.nodes[0].address
    assert s.market.job(job).status == JobStatus.ABORTING
    assert event.args["deadline"] == s.market.job(job).deadline  # the abort's time
    with reverts("WrongStatus", have=JobStatus.ABORTING):
        s.market.abort_job(job, COORD, stages, "again", account=s.nodes[0])
    with reverts("WrongStatus", have=JobStatus.ABORTING):  # no result after an abort
        s.market.submit_result(job, COORD, stages, "QmO", s.world.receipts(job, stages, "QmO"), account=s.nodes[2])
    with reverts("ClaimWindowOpen", jobId=job):
        s.market.expire_job(job, COORD, stages, account=dev_account(13))
    assert s.world.contracts.account(s.client.address).credit == 0
    s.world.advance(s.market.claim_window_s() + 1)
    receipt = s.market.expire_job(job, COORD, stages, account=dev_account(13))
    [expired] = [e for e in s.market.events_in(receipt) if e.name == "JobExpired"]
    assert expired.args["failedNodes"] == []
    assert s.market.job(job).status == JobStatus.ABORTED
    assert s.world.contracts.account(s.client.address).credit == MAX_FEE
    assert [s.world.contracts.account(st.node).jobs_failed for st in stages] == [0, 0, 0]
    posted = s.post()
    with reverts("NotOnRoute", jobId=posted):
        s.market.abort_job(posted, COORD, [], "x", account=s.nodes[0])
    s.market.abort_job(posted, COORD, [], "unknown input CID", account=s.world.coordinator)
    assert s.market.job(posted).status == JobStatus.ABORTED  # not routed: settled at once
    assert s.world.contracts.account(s.client.address).credit == 2 * MAX_FEE
