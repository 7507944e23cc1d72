"""Events alone rebuild every job's history and every balance: replay the logs of a scripted
history and compare with contract state, field by field."""

from shardnet.chain import dev_account
from shardnet.events import EventReader
from shardnet.ledger import Ledger
from shardnet.protocol import JobStatus
from shardnet.scenario import ETHER

COORD = dev_account(1).address  # the devnet coordinator


def test_replayed_events_equal_contract_state(world):
    c, w = world.contracts, world
    start = w.chain.w3.eth.block_number + 1
    nodes = w.register_nodes(4)
    model = w.register_model(6, price_per_block=10**12)
    spans = w.assign_even(model, nodes[:3], 6)
    c.models.assign_shard(model, nodes[3].address, 2, 4, account=w.coordinator)
    c.models.confirm_shard(model, account=nodes[3])
    client = dev_account(12)
    stages = w.stages(nodes[:3], spans, 10**12)

    done = w.post(model, client, 10**15)
    c.market.route_job(done, stages, account=w.coordinator)
    c.market.submit_result(done, COORD, stages, "QmA", w.receipts(done, stages, "QmA"), account=nodes[2])

    rerouted = w.post(model, client, 10**15)
    c.market.route_job(rerouted, stages, account=w.coordinator)
    new = [stages[0], stages[1]._replace(node=nodes[3].address), stages[2]]
    c.market.reroute_job(rerouted, COORD, stages, new, account=w.coordinator)
    c.market.submit_result(rerouted, COORD, new, "QmB", w.receipts(rerouted, new, "QmB"), account=nodes[2])

    cancelled = w.post(model, client, 10**14)
    c.market.cancel_job(cancelled, account=client)

    expired = w.post(model, client, 10**15, ttl_s=100)
    c.market.route_job(expired, stages, account=w.coordinator)
    open_job = w.post(model, dev_account(13), 10**15)
    c.market.route_job(open_job, stages, account=w.coordinator)
    w.advance(200)
    for k, receipt in enumerate(w.receipts(expired, stages, "QmC")[:2]):  # two stages prove delivery
        c.market.claim_delivery(expired, COORD, stages, k, receipt, account=nodes[k])
    w.advance(c.market.claim_window_s())
    c.market.expire_job(expired, COORD, stages, account=client)

    c.nodes.grant_slasher(w.admin.address, account=w.admin)
    c.nodes.slash(nodes[3].address, ETHER // 3, "mismatch", account=w.admin)
    c.market.withdraw(account=nodes[0])
    c.market.withdraw(account=client)
    c.nodes.add_stake(ETHER, account=nodes[3])
    c.nodes.request_unstake(ETHER // 2, account=nodes[3])

    ledger = Ledger()
    follower = EventReader(
        w.chain, [c.nodes.address, c.models.address, c.market.address, c.verifier.address], start_block=start
    )
    for event in follower.poll():
        ledger.apply(event)

    assert set(ledger.jobs) == {done, rerouted, cancelled, expired, open_job}
    for job_id, rec in ledger.jobs.items():
        on_chain = c.market.job(job_id)
        assert (rec.status, rec.escrow, rec.client, rec.model_id) == (
            on_chain.status,
            on_chain.held,
            on_chain.client,
            on_chain.model_id,
        ), job_id
        assert sum(rec.payouts.values()) + rec.refunded + rec.escrow == rec.max_fee
    assert ledger.jobs[rerouted].route[1][0] == nodes[3].address and ledger.jobs[rerouted].reroutes == 1
    assert ledger.jobs[expired].failed_nodes == [stages[2].node]
    assert ledger.jobs[open_job].status == JobStatus.ROUTED
    assert ledger.jobs[done].history[0][1] == "JobPosted" and ledger.jobs[done].history[-1][1] == "ResultSubmitted"

    everyone = {a.address for a in nodes} | {client.address, dev_account(13).address, w.coordinator.address}
    for who in everyone:
        acct = c.account(who)
        rec = ledger.accounts[who]
        assert (rec.credit, rec.jobs_failed) == (acct.credit + acct.pending, acct.jobs_failed), who
        assert rec.open_jobs == (who in {s.node for s in stages})  # the open job's route
    assert [ledger.accounts[a.address].jobs_done for a in nodes] == [2, 1, 2, 1]  # counted from events
    for acct in nodes:
        info = c.nodes.node(acct.address)
        assert (ledger.nodes[acct.address].stake, ledger.nodes[acct.address].pending_unstake) == (
            info.stake,
            info.pending_unstake,
        )
    assert ledger.verifier_held == w.chain.w3.eth.get_balance(c.verifier.address) == 0  # the admin slashed here
    escrows = sum(r.escrow for r in ledger.jobs.values())
    credits = sum(r.credit for r in ledger.accounts.values())
    assert w.chain.w3.eth.get_balance(c.market.address) == escrows + credits
