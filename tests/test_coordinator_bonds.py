"""Coordinators' power, bounded on the real chain: a reroute takes effect at once and records the
replaced node failed, but needs a bond, and a replaced node that is live contests it with its
receipt, which strikes its failure off and fines the coordinator's bond (to the treasury); bonds
leave only after the cooldown, and stay fineable until then."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from shardnet.audit import reconcile
from shardnet.chain import dev_account
from shardnet.events import EventReader
from shardnet.ledger import Ledger
from shardnet.protocol import JobStatus, Stage
from shardnet.scenario import World
from tests.helpers import reverts

FEE_PER_BLOCK = 10**12
MAX_FEE = 10**15
COORD = dev_account(1)  # the devnet coordinator, bonded at deploy time
ROGUE = dev_account(15)  # granted the coordinator role, never bonded
CLIENT = dev_account(12)


@pytest.fixture
def w(world: World) -> World:
    world.contracts.market.grant_coordinator(ROGUE.address, account=world.admin)
    return world


def _job_with_replica(w: World) -> tuple[int, list[Stage], list[Stage], list]:
    """A job routed through nodes 0, 1, 2, and the route that replaces node 1 by node 3 (a replica
    of its span)."""
    nodes = w.register_nodes(4)
    model = w.register_model(6, price_per_block=FEE_PER_BLOCK)
    spans = w.assign_even(model, nodes[:3], 6)
    w.contracts.models.assign_shard(model, nodes[3].address, *spans[1], account=w.coordinator)
    w.contracts.models.confirm_shard(model, account=nodes[3])
    job = w.post(model, CLIENT, MAX_FEE)
    stages = w.stages(nodes[:3], spans, FEE_PER_BLOCK)
    w.contracts.market.route_job(job, stages, account=COORD)
    return job, stages, [stages[0], stages[1]._replace(node=nodes[3].address), stages[2]], nodes


def _receipt(w: World, job: int, stage: int, s: Stage, signer=None):
    signer = signer or w.account_of(s.node)
    return w.contracts.market.receipts.sign(
        signer, job, stage, s, COORD.address, keccak(text=f"in-{job}"), keccak(text=f"out-{job}")
    )


def test_rerouting_away_from_a_node_needs_the_minimum_bond(w: World):
    """A reroute is what can be fined, so a coordinator without the bond may route (every route is
    checked in full by the market) but not replace a node."""
    nodes = w.register_nodes(4)
    model = w.register_model(6, price_per_block=FEE_PER_BLOCK)
    spans = w.assign_even(model, nodes[:3], 6)
    w.contracts.models.assign_shard(model, nodes[3].address, *spans[1], account=w.coordinator)
    w.contracts.models.confirm_shard(model, account=nodes[3])
    stages = w.stages(nodes[:3], spans, FEE_PER_BLOCK)
    new = [stages[0], stages[1]._replace(node=nodes[3].address), stages[2]]
    job = w.post(model, CLIENT, MAX_FEE)
    registry, market = w.contracts.nodes, w.contracts.market
    need = registry.min_coordinator_bond()
    assert need > 0 and registry.coordinator_bond(COORD.address)[0] >= need
    market.route_job(job, stages, account=ROGUE)
    with reverts("CoordinatorNotBonded", coordinator=ROGUE.address, bond=0, minBond=need):
        market.reroute_job(job, ROGUE.address, stages, new, account=ROGUE)
    registry.bond_coordinator(need, account=ROGUE)
    market.reroute_job(job, ROGUE.address, stages, new, account=ROGUE)
    assert market.job(job).status == JobStatus.ROUTED and registry.failures(stages[1].node) == 1


def test_a_live_node_contests_its_replacement_and_the_coordinator_is_fined(w: World):
    start = w.chain.w3.eth.block_number + 1
    job, stages, new, _ = _job_with_replica(w)
    c = w.contracts
    victim = stages[1].node
    bond_before = c.nodes.coordinator_bond(COORD.address)[0]
    treasury = c.nodes.contract.functions.treasury().call()
    treasury_before = w.chain.w3.eth.get_balance(treasury)
    c.market.reroute_job(job, COORD.address, stages, new, account=COORD)
    assert c.nodes.failures(victim) == 1
    assert c.nodes.contestable_until(job, victim) > 0

    # only the replaced node, for its own stage of the old route, with its own signature
    with reverts("NotReplaced", jobId=job, node=stages[0].node):
        c.nodes.contest_replacement(
            job, 0, stages[0], _receipt(w, job, 0, stages[0]), account=w.account_of(stages[0].node)
        )
    with reverts("ReplacementMismatch", jobId=job, stage=2):
        c.nodes.contest_replacement(job, 2, stages[1], _receipt(w, job, 2, stages[1]), account=w.account_of(victim))
    forged = _receipt(w, job, 1, stages[1], signer=w.account_of(stages[2].node))
    with reverts("BadContestReceipt", jobId=job, node=victim, recovered=stages[2].node):
        c.nodes.contest_replacement(job, 1, stages[1], forged, account=w.account_of(victim))

    receipt = c.nodes.contest_replacement(
        job, 1, stages[1], _receipt(w, job, 1, stages[1]), account=w.account_of(victim)
    )
    [event] = [e for e in c.nodes.events_in(receipt) if e.name == "RerouteContested"]
    fine = 2 * stages[1].fee
    assert event.args["fine"] == fine and event.args["coordinator"] == COORD.address
    assert c.nodes.failures(victim) == 0
    assert c.nodes.coordinator_bond(COORD.address)[0] == bond_before - fine
    assert w.chain.w3.eth.get_balance(treasury) == treasury_before + fine
    with reverts("NotReplaced", jobId=job, node=victim):  # once
        c.nodes.contest_replacement(job, 1, stages[1], _receipt(w, job, 1, stages[1]), account=w.account_of(victim))
    # the job goes on along the new route, untouched by the contest
    c.market.submit_result(
        job, COORD.address, new, "QmOut", w.receipts(job, new, "QmOut"), account=w.account_of(new[2].node)
    )
    assert c.market.job(job).status == JobStatus.COMPLETED

    ledger = Ledger()
    for event in EventReader(
        w.chain, [c.nodes.address, c.models.address, c.market.address, c.verifier.address], start_block=start
    ).poll():
        ledger.apply(event)
    assert ledger.reroute_fines[COORD.address] == fine and ledger.jobs[job].contested == [victim]
    assert ledger.accounts[victim].jobs_failed == 0


def test_a_replacement_not_contested_in_time_stands(w: World):
    job, stages, new, _ = _job_with_replica(w)
    c = w.contracts
    victim = stages[1].node
    bond_before = c.nodes.coordinator_bond(COORD.address)[0]
    c.market.reroute_job(job, COORD.address, stages, new, account=COORD)
    until = c.nodes.contestable_until(job, victim)
    w.advance(c.nodes.contract.functions.CONTEST_WINDOW().call() + 1)
    with reverts("ContestWindowClosed", jobId=job, closedAt=until):
        c.nodes.contest_replacement(job, 1, stages[1], _receipt(w, job, 1, stages[1]), account=w.account_of(victim))
    assert c.nodes.failures(victim) == 1
    assert c.nodes.coordinator_bond(COORD.address)[0] == bond_before


def test_a_bond_asked_out_stays_fineable_until_the_cooldown(w: World):
    """A coordinator that reroutes a healthy node away and unbonds at once still pays the fine,
    and gets only the rest, and only after the cooldown."""
    job, stages, new, _ = _job_with_replica(w)
    c = w.contracts
    bond = c.nodes.coordinator_bond(COORD.address)[0]
    c.market.reroute_job(job, COORD.address, stages, new, account=COORD)
    c.nodes.request_unbond(bond, account=COORD)
    with reverts("CooldownNotOver"):
        c.nodes.withdraw_unbonded(account=COORD)
    # an unbonded coordinator replaces no node
    nodes = [w.account_of(s.node) for s in stages]
    job2 = w.post(c.market.job(job).model_id, CLIENT, MAX_FEE)
    c.market.route_job(job2, stages, account=COORD)
    with reverts("CoordinatorNotBonded", coordinator=COORD.address, bond=0):
        c.market.reroute_job(job2, COORD.address, stages, new, account=COORD)
    c.nodes.contest_replacement(job, 1, stages[1], _receipt(w, job, 1, stages[1]), account=nodes[1])
    fine = 2 * stages[1].fee
    assert c.nodes.coordinator_bond(COORD.address)[:2] == (0, bond - fine)
    w.advance(c.nodes.cooldown_s() + 1)
    balance = w.chain.w3.eth.get_balance(COORD.address)
    receipt = c.nodes.withdraw_unbonded(account=COORD)
    gas = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert w.chain.w3.eth.get_balance(COORD.address) == balance + bond - fine - gas

    ledger = Ledger()
    for event in EventReader(w.chain, [c.nodes.address, c.models.address, c.market.address, c.verifier.address]).poll():
        ledger.apply(event)
    assert reconcile(w.chain, ledger) == []  # bonds and the registry's ETH balance, to the wei
