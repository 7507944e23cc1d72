"""A scripted on-chain history for the auditor tests: jobs completed, rerouted, expired,
cancelled and aborted; a slash; withdrawals; an unstake. `History` is the ground truth the
script knows, to compare every audit view against."""

from __future__ import annotations

from dataclasses import dataclass, field

from shardnet.bindings import ZERO_ADDRESS
from shardnet.chain import dev_account
from shardnet.protocol import Stage
from shardnet.scenario import ETHER, World

MAX_FEE = 10**15
FEE_PER_BLOCK = 10**12


@dataclass
class History:
    model: int = 0
    nodes: list[str] = field(default_factory=list)
    clients: list[str] = field(default_factory=list)
    status: dict[int, str] = field(default_factory=dict)  # job -> status
    routes: dict[int, list[Stage]] = field(default_factory=dict)  # job -> final route
    payouts: dict[int, dict[str, int]] = field(default_factory=dict)  # job -> payee -> wei
    refunds: dict[int, int] = field(default_factory=dict)
    failed: dict[int, list[str]] = field(default_factory=dict)  # job -> nodes recorded as failed
    rerouted: set[int] = field(default_factory=set)
    slashed: dict[str, int] = field(default_factory=dict)
    withdrawn: dict[str, int] = field(default_factory=dict)
    aborted_reason: str = "input is not JSON; fix the input and post again"


def script(world: World) -> History:
    market, models = world.contracts.market, world.contracts.models
    h = History()
    nodes = world.register_nodes(4)
    h.nodes = [n.address for n in nodes]
    h.model = world.register_model(12, price_per_block=FEE_PER_BLOCK, name="audit-model")
    spans = world.assign_even(h.model, nodes[:3], 12)
    models.assign_shard(h.model, nodes[3].address, 4, 8, account=world.coordinator)
    models.confirm_shard(h.model, account=nodes[3])
    clients = [dev_account(12), dev_account(13)]
    h.clients = [c.address for c in clients]
    bps = market.coordinator_fee_bps()
    coord = world.coordinator.address

    def complete(job, stages):
        market.submit_result(
            job,
            coord,
            stages,
            f"QmOut{job}",
            world.receipts(job, stages, f"QmOut{job}"),
            account=world.account_of(stages[-1].node),
        )
        fees = sum(s.fee for s in stages)
        h.payouts[job] = {s.node: s.fee for s in stages} | {coord: fees * bps // 10_000}
        h.refunds[job] = MAX_FEE - fees - fees * bps // 10_000
        h.status[job], h.routes[job] = "completed", stages

    def routed(client):
        job = world.post(h.model, client, MAX_FEE)
        stages = world.stages(nodes[:3], spans, FEE_PER_BLOCK)
        market.route_job(job, stages, account=world.coordinator)
        return job, stages

    for client in clients:  # two plain jobs
        complete(*routed(client))
    job, stages = routed(clients[0])  # rerouted around node 1, then completed
    new = [stages[0], stages[1]._replace(node=nodes[3].address), stages[2]]
    market.reroute_job(job, coord, stages, new, account=world.coordinator)
    complete(job, new)
    h.rerouted.add(job)
    h.failed[job] = [nodes[1].address]

    job = world.post(h.model, clients[1], MAX_FEE)  # cancelled
    market.cancel_job(job, account=clients[1])
    h.status[job], h.refunds[job] = "cancelled", MAX_FEE

    job = world.post(h.model, clients[0], MAX_FEE)  # aborted by the coordinator
    market.abort_job(job, ZERO_ADDRESS, [], h.aborted_reason, account=world.coordinator)
    h.status[job], h.refunds[job] = "aborted", MAX_FEE

    job = world.post(h.model, clients[0], MAX_FEE, ttl_s=100)  # expired: only stage 0 proved delivery
    stages = world.stages(nodes[:3], spans, FEE_PER_BLOCK)
    market.route_job(job, stages, account=world.coordinator)
    world.advance(200)
    market.claim_delivery(job, coord, stages, 0, world.receipts(job, stages, "QmNever")[0], account=nodes[0])
    world.advance(market.claim_window_s())
    market.expire_job(job, coord, stages, account=clients[0])
    h.status[job], h.refunds[job], h.routes[job] = "expired", MAX_FEE - stages[0].fee, stages
    h.payouts[job] = {stages[0].node: stages[0].fee}
    h.failed[job] = [nodes[1].address, nodes[2].address]

    complete(*routed(clients[1]))  # one more after the trouble

    world.contracts.nodes.grant_slasher(world.admin.address, account=world.admin)
    world.contracts.nodes.slash(nodes[2].address, ETHER // 4, "served a wrong output", account=world.admin)
    h.slashed[nodes[2].address] = ETHER // 4
    world.contracts.nodes.request_unstake(ETHER, account=nodes[3])  # leaves the network
    world.advance(2 * market.epoch_length_s())  # every fee is past its audit window
    for who in (nodes[0], clients[0]):
        credit = market.credit(who.address)
        market.withdraw(account=who)
        h.withdrawn[who.address] = credit
    return h
