"""Attacks on the market's money paths, each tried on the real chain: the attacker's move must now
fail, and nobody loses what was stored, staked or paid."""

from __future__ import annotations

from dataclasses import replace

import pytest

from shardnet.chain import dev_account
from shardnet.protocol import JobStatus, Stage
from shardnet.scenario import World
from tests.helpers import reverts

FEE_PER_BLOCK = 10**12
MAX_FEE = 10**15
COORD = dev_account(1)
ROGUE = dev_account(15)  # a second coordinator, granted the role by the admin


@pytest.fixture
def w(world: World) -> World:
    world.contracts.market.grant_coordinator(ROGUE.address, account=world.admin)
    return world


def _routed(w: World) -> tuple[int, list[Stage], list]:
    nodes = w.register_nodes(3)
    model = w.register_model(6, price_per_block=FEE_PER_BLOCK)
    spans = w.assign_even(model, nodes, 6)
    job = w.post(model, dev_account(12), MAX_FEE)
    stages = w.stages(nodes, spans, FEE_PER_BLOCK)
    w.contracts.market.route_job(job, stages, account=COORD)
    return job, stages, nodes


def test_only_the_routing_coordinator_reroutes(w: World):
    job, stages, _ = _routed(w)
    market = w.contracts.market
    with reverts("NotRoutingCoordinator", jobId=job, caller=ROGUE.address, coordinator=COORD.address):
        market.reroute_job(job, COORD.address, stages, stages, account=ROGUE)
    assert market.job(job).status == JobStatus.ROUTED
    assert [w.contracts.nodes.failures(s.node) for s in stages] == [0, 0, 0]


def test_cut_rate_is_fixed_at_routing(w: World):
    """Raising the cut after routing neither blocks nor changes the payout of a job in flight."""
    job, stages, nodes = _routed(w)
    market = w.contracts.market
    before = market.coordinator_fee_bps()
    market.set_terms(replace(market.terms(), coordinator_fee_bps=2_000), account=w.admin)
    assert market.job(job).coordinator_fee_bps == before
    market.submit_result(job, COORD.address, stages, "QmOut", w.receipts(job, stages, "QmOut"), account=nodes[-1])
    paid = sum(s.fee for s in stages)
    assert market.credit(COORD.address) == paid * before // 10_000
    assert market.credit(dev_account(12).address) == MAX_FEE - paid - paid * before // 10_000  # reserve included


def test_receipts_bind_the_route_they_were_signed_for(w: World):
    """Receipts signed under another coordinator (or another fee) do not pay on this route."""
    job, stages, nodes = _routed(w)
    forged = w.receipts(job, stages, "QmOut", coordinator=ROGUE.address)
    with reverts("InvalidReceiptSigner", jobId=job, stage=0):
        w.contracts.market.submit_result(job, COORD.address, stages, "QmOut", forged, account=nodes[-1])
    cheap = [s._replace(fee=1) for s in stages]
    signed_cheap = w.receipts(job, cheap, "QmOut")
    with reverts("InvalidReceiptSigner", jobId=job, stage=0):
        w.contracts.market.submit_result(job, COORD.address, stages, "QmOut", signed_cheap, account=nodes[-1])


def test_routes_cannot_outgrow_the_checks(w: World):
    """More than 64 stages is refused before any check that keeps a bit per stage; the registries'
    per-stage views refuse more than 256 entries instead of wrapping."""
    nodes = w.register_nodes(1)
    model = w.register_model(300, price_per_block=1)
    job = w.post(model, dev_account(12), MAX_FEE)
    stranger = dev_account(16).address  # never registered, never staked
    route = [Stage(nodes[0].address if i == 0 else stranger, i, i + 1, 1) for i in range(300)]
    with reverts("RouteTooLong", jobId=job, stages=300, max=64):
        w.contracts.market.route_job(job, route, account=COORD)
    many = [stranger] * 257
    with reverts("TooManyNodes", count=257, max=256):
        w.chain.call(w.contracts.nodes.contract.functions.inactiveMask(many))
    with reverts("TooManyStages", count=257, max=256):
        w.chain.call(w.contracts.models.contract.functions.routeInfo(model, many, [0] * 257, [1] * 257))
    assert w.contracts.market.job(job).status == JobStatus.POSTED


def test_a_later_stage_cannot_abort_for_a_free_refund(w: World):
    """The last stage (say, colluding with the client) cannot abort a job once the work is done
    for a full refund with nobody paid: only the first stage, which reads the client's input, or
    the coordinator may abort. A job a later stage cannot finish expires; delivered stages are paid."""
    job, stages, nodes = _routed(w)
    market = w.contracts.market
    for later in (nodes[1], nodes[2]):
        with reverts("OnlyFirstStageAborts", jobId=job, caller=later.address):
            market.abort_job(job, COORD.address, stages, "input is malformed", account=later)
    assert market.job(job).status == JobStatus.ROUTED


def test_the_first_stage_cannot_abort_after_the_work_for_a_free_refund(w: World):
    """Stage 0 (say, colluding with the client) sees the last token loop back and aborts before the
    result is submitted. The abort only opens the claim window: the later stages prove delivery
    and are paid; the client gets back only what the silent stage 0 did not earn, and stage 0 is
    recorded failed."""
    job, stages, nodes = _routed(w)
    market = w.contracts.market
    client = dev_account(12).address
    receipts = w.receipts(job, stages, "QmOut")
    market.abort_job(job, COORD.address, stages, "input is not JSON", account=nodes[0])
    assert market.job(job).status == JobStatus.ABORTING
    market.claim_delivery(job, COORD.address, stages, 1, receipts[1], account=nodes[1])
    market.claim_delivery(job, COORD.address, stages, 2, receipts[2], account=nodes[2])
    w.advance(market.claim_window_s() + 1)
    market.expire_job(job, COORD.address, stages, account=dev_account(13))
    assert market.job(job).status == JobStatus.ABORTED
    assert [market.credit(s.node) for s in stages] == [0, stages[1].fee, stages[2].fee]
    assert market.credit(client) == MAX_FEE - stages[1].fee - stages[2].fee
    assert [w.contracts.nodes.failures(s.node) for s in stages] == [1, 0, 0]
