"""NodeRegistry on the real Anvil: every success path and every custom error."""

import pytest

from shardnet.chain import dev_account
from shardnet.protocol import Hardware
from shardnet.scenario import ETHER
from tests.helpers import deploy_attacker, reverts

HW = Hardware(8192, 20, 500)


@pytest.fixture
def nodes(world):
    return world.contracts.nodes


@pytest.fixture
def op():
    return dev_account(12)


def test_register_add_stake_update_profile(world, nodes, op):
    receipt = nodes.register("http://a:1", HW, b"\xaa" * 20, 2 * ETHER, account=op)
    [event] = nodes.events_in(receipt)
    assert event.name == "NodeRegistered" and event.args["node"] == op.address and event.args["stake"] == 2 * ETHER
    info = nodes.node(op.address)
    assert (info.stake, info.hardware, info.endpoint, info.data_key) == (2 * ETHER, HW, "http://a:1", b"\xaa" * 20)
    assert nodes.is_active(op.address)
    assert op.address in nodes.nodes()
    nodes.add_stake(ETHER, account=op)
    assert nodes.node(op.address).stake == 3 * ETHER
    nodes.update_profile("http://b:2", Hardware(1, 2, 3), b"\x01", account=op)
    info = nodes.node(op.address)
    assert (info.endpoint, info.hardware, info.data_key) == ("http://b:2", Hardware(1, 2, 3), b"\x01")


def test_two_step_unstake(world, nodes, op):
    nodes.register("http://a", HW, b"", 3 * ETHER, account=op)
    nodes.request_unstake(2 * ETHER, account=op)
    info = nodes.node(op.address)
    assert (info.stake, info.pending_unstake) == (ETHER, 2 * ETHER)
    with reverts("CooldownNotOver", node=op.address):
        nodes.withdraw_unstaked(account=op)
    world.advance(nodes.cooldown_s() + 1)
    before = world.chain.w3.eth.get_balance(op.address)
    receipt = nodes.withdraw_unstaked(account=op)
    gas = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert world.chain.w3.eth.get_balance(op.address) == before + 2 * ETHER - gas
    assert nodes.node(op.address).pending_unstake == 0
    # leaving entirely makes the node inactive
    nodes.request_unstake(ETHER, account=op)
    assert not nodes.is_active(op.address)


def test_slash_sends_the_stake_to_the_slasher(world, nodes, op):
    nodes.register("http://a", HW, b"", 2 * ETHER, account=op)
    nodes.request_unstake(ETHER, account=op)  # pending unstake stays slashable
    nodes.grant_slasher(world.admin.address, account=world.admin)
    w3 = world.chain.w3
    before = w3.eth.get_balance(world.admin.address)
    receipt = nodes.slash(op.address, ETHER + ETHER // 2, "wrong output", account=world.admin)
    gas = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert nodes.events_in(receipt)[0].args["reason"] == "wrong output"
    info = nodes.node(op.address)
    assert (info.stake, info.pending_unstake) == (0, ETHER // 2)
    assert w3.eth.get_balance(world.admin.address) == before + ETHER + ETHER // 2 - gas
    # a slash larger than what is left takes what is left
    receipt = nodes.slash(op.address, 5 * ETHER, "again", account=world.admin)
    assert nodes.events_in(receipt)[0].args["amount"] == ETHER // 2
    # what is left in the registry is the coordinator's bond alone
    assert w3.eth.get_balance(nodes.address) == nodes.coordinator_bond(world.coordinator.address)[0]


def test_slash_by_unauthorised_caller(world, nodes, op):
    nodes.register("http://a", HW, b"", ETHER, account=op)
    with reverts("AccessControlUnauthorizedAccount", account=dev_account(13).address):
        nodes.slash(op.address, 1, "x", account=dev_account(13))
    assert nodes.node(op.address).stake == ETHER


def test_register_errors(nodes, op):
    with reverts("InsufficientStake", have=ETHER - 1, need=ETHER):
        nodes.register("http://a", HW, b"", ETHER - 1, account=op)
    with reverts("EmptyEndpoint"):
        nodes.register("", HW, b"", ETHER, account=op)
    with reverts("InvalidHardware", field="memoryMb"):
        nodes.register("http://a", Hardware(0, 1, 1), b"", ETHER, account=op)
    nodes.register("http://a", HW, b"", ETHER, account=op)
    with reverts("AlreadyRegistered", node=op.address):
        nodes.register("http://a", HW, b"", ETHER, account=op)


def test_not_registered_and_zero_amount(nodes, op):
    with reverts("NotRegistered", node=op.address):
        nodes.add_stake(ETHER, account=op)
    nodes.register("http://a", HW, b"", ETHER, account=op)
    with reverts("ZeroAmount"):
        nodes.add_stake(0, account=op)


def test_unstake_errors(nodes, op):
    nodes.register("http://a", HW, b"", 2 * ETHER, account=op)
    with reverts("UnstakeExceedsStake", requested=3 * ETHER):
        nodes.request_unstake(3 * ETHER, account=op)
    with reverts("UnstakeLeavesDust", remaining=ETHER // 2):
        nodes.request_unstake(ETHER + ETHER // 2, account=op)
    with reverts("NothingToWithdraw", account=op.address):
        nodes.withdraw_unstaked(account=op)


def test_unstake_waits_out_every_job_the_node_may_be_on(world, nodes):
    """A node on an open route may ask to leave, but its stake stays slashable until every job it
    could be on has passed its deadline, its claim window and its audit window."""
    node_accts = world.register_nodes(3)
    model = world.register_model(6)
    spans = world.assign_even(model, node_accts, 6)
    job = world.post(model, dev_account(12), ETHER)
    world.contracts.market.route_job(job, world.stages(node_accts, spans, 10**9), account=world.coordinator)
    market = world.contracts.market
    horizon = market.terms().max_job_duration + market.claim_window_s() + 2 * market.epoch_length_s()
    assert nodes.cooldown_s() >= horizon
    receipt = nodes.request_unstake(ETHER, account=node_accts[1])
    now = world.chain.w3.eth.get_block(receipt["blockNumber"])["timestamp"]
    assert nodes.node(node_accts[1].address).unlock_at == now + nodes.cooldown_s()
    world.advance(horizon - 10)
    with reverts("CooldownNotOver", node=node_accts[1].address):
        nodes.withdraw_unstaked(account=node_accts[1])


def test_only_judges_record_failures_or_slash(world, nodes):
    """Nobody but the market and the verifier writes a node's failures or takes its stake."""
    me = world.register_nodes(1)[0]
    record = nodes.contract.functions.recordFailures(1, [me.address])
    with reverts("AccessControlUnauthorizedAccount", account=me.address):
        world.chain.transact(record, account=me)
    with reverts("AccessControlUnauthorizedAccount", account=world.admin.address):
        world.chain.transact(record, account=world.admin)
    assert nodes.failures(me.address) == nodes.node(me.address).jobs_failed == 0


def test_market_set_once(world, nodes):
    with reverts("MarketAlreadySet"):
        world.chain.transact(nodes.contract.functions.setMarket(world.admin.address), account=world.admin)


def test_transfer_failed_keeps_pending_unstake(world, nodes):
    attacker = deploy_attacker(world.chain)
    world.chain.transact(attacker.functions.setMode(1))
    register = nodes.contract.functions.register("http://x", tuple(HW), b"")._encode_transaction_data()
    world.chain.transact(attacker.functions.exec(nodes.address, register), value=ETHER)
    unstake = nodes.contract.functions.requestUnstake(ETHER)._encode_transaction_data()
    world.chain.transact(attacker.functions.exec(nodes.address, unstake))
    world.advance(nodes.cooldown_s() + 1)
    withdraw = nodes.contract.functions.withdrawUnstaked()._encode_transaction_data()
    with reverts("TransferFailed", to=attacker.address, amount=ETHER):
        world.chain.transact(attacker.functions.exec(nodes.address, withdraw))
    assert nodes.node(attacker.address).pending_unstake == ETHER
