"""Gas per contract operation, measured on a private devnet (real Anvil, real contracts).

Prints one `name: value` line per figure. `gas_job_3_stages_total` is one whole unaudited job on
a running network: post + route + submit with 3 receipts + the 3 stage withdrawals (after the
audit window), for a job whose nodes and client have served or posted before (their account
slots are warm, as on any network past its first job). `gas_job_3_stages_total_first_job` is
the same for the very first job of fresh accounts (one-time storage initialisation included).
`gas_audit_per_stage` is what checking one stage costs everyone together: its share of the draw,
three members' commits and reveals, and the resolution (the stage found right).
"""

from __future__ import annotations

import os
from dataclasses import replace

from shardnet import devnet as dn
from shardnet.chain import Chain, dev_account
from shardnet.protocol import Hardware, Vote
from shardnet.scenario import ETHER, World

TARGET_TOTAL = 400_000
COORD = dev_account(1).address  # the devnet coordinator


OUTPUT = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"


def post_route_submit(world: World, model: int, nodes, spans, client, audit_bps: int) -> tuple[int, list[dict]]:
    market = world.contracts.market
    stages = world.stages(nodes, spans, 10**12)
    deadline = world.chain.w3.eth.get_block("latest")["timestamp"] + 3600
    post = world.chain.transact(
        market.contract.functions.postJob(
            model,
            "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG",
            b'{"kind":"generate","max_new_tokens":32}',
            10**15,
            deadline,
            audit_bps,
        ),
        value=10**15,
        account=client,
    )
    job = market.job_count()
    route = market.route_job(job, stages, account=world.coordinator)
    receipts = world.receipts(job, stages, OUTPUT)
    submit = market.submit_result(job, COORD, stages, OUTPUT, receipts, account=nodes[-1])
    return job, [post, route, submit]


def one_job(world: World, model: int, nodes, spans, client) -> dict[str, int]:
    market = world.contracts.market
    _, (post, route, submit) = post_route_submit(world, model, nodes, spans, client, 0)
    world.advance(2 * market.epoch_length_s())  # the audit window is over: fees are withdrawable
    withdrawals = [market.withdraw(account=n)["gasUsed"] for n in nodes]
    return {
        "post": post["gasUsed"],
        "route": route["gasUsed"],
        "submit": submit["gasUsed"],
        "withdraw": max(withdrawals),
        "total": post["gasUsed"] + route["gasUsed"] + submit["gasUsed"] + sum(withdrawals),
    }


def main() -> None:
    with dn.temporary() as (deployment, _):
        chain = Chain.from_deployment(deployment, account=dev_account(0))
        world = World.of(chain)
        register = world.contracts.nodes.register(
            "http://127.0.0.1:7001", Hardware(8192, 10, 100), b"\x01" * 33, ETHER, account=dev_account(15)
        )
        nodes = world.register_nodes(3)
        model_receipt_block = chain.w3.eth.block_number
        model = world.register_model(12, price_per_block=10**12)
        register_model_gas = chain.w3.eth.get_transaction_receipt(
            chain.w3.eth.get_block(model_receipt_block + 1)["transactions"][0]
        )["gasUsed"]
        assign = world.contracts.models.assign_shard(model, nodes[0].address, 0, 4, account=world.coordinator)
        confirm = world.contracts.models.confirm_shard(model, account=nodes[0])
        world.contracts.models.assign_shard(model, nodes[1].address, 4, 8, account=world.coordinator)
        world.contracts.models.confirm_shard(model, account=nodes[1])
        world.contracts.models.assign_shard(model, nodes[2].address, 8, 12, account=world.coordinator)
        world.contracts.models.confirm_shard(model, account=nodes[2])
        spans = [(0, 4), (4, 8), (8, 12)]
        client = dev_account(12)
        market = world.contracts.market
        market.set_terms(replace(market.terms(), min_audit_bps=0), account=world.admin)  # an unaudited job
        first = one_job(world, model, nodes, spans, client)
        steady = one_job(world, model, nodes, spans, client)
        world.register_nodes(6)  # committees of three from the nodes off the stage
        audit = audited_stage(world, model, nodes, spans, client)

    print(f"gas_register_node: {register['gasUsed']}")
    print(f"gas_register_model: {register_model_gas}")
    print(f"gas_assign_shard: {assign['gasUsed']}")
    print(f"gas_confirm_shard: {confirm['gasUsed']}")
    print(f"gas_post_job: {steady['post']}")
    print(f"gas_route_job_3_stages: {steady['route']}")
    print(f"gas_submit_result_3_receipts: {steady['submit']}")
    print(f"gas_withdraw: {steady['withdraw']}")
    print(f"gas_job_3_stages_total: {steady['total']}")
    print(f"gas_job_3_stages_total_first_job: {first['total']}")
    print(f"gas_job_3_stages_total_vs_target: {steady['total'] / TARGET_TOTAL:.3f}")
    print(f"gas_audit_draw_per_stage: {audit['draw']}")
    print(f"gas_audit_commit: {audit['commit']}")
    print(f"gas_audit_reveal: {audit['reveal']}")
    print(f"gas_audit_resolve: {audit['resolve']}")
    print(f"gas_audit_per_stage: {audit['total']}")


def audited_stage(world: World, model: int, nodes, spans, client) -> dict[str, int]:
    """A job audited at every stage; gas of the draw (per stage) and of one stage's committee."""
    market, verifier = world.contracts.market, world.contracts.verifier
    job, _ = post_route_submit(world, model, nodes, spans, client, 10_000)
    first = verifier.audit_count() + 1
    stages = world.stages(nodes, spans, 10**12)
    draw = market.draw_audits(job, COORD, stages, account=world.admin, gas=3_000_000)["gasUsed"] // len(stages)
    members = verifier.members(first)
    salts = {m: os.urandom(32) for m in members}
    commits = [
        verifier.commit(first, verifier.commitment(first, m, Vote.CORRECT, salts[m]), account=world.account_of(m))
        for m in members
    ]
    reveals = [verifier.reveal(first, Vote.CORRECT, salts[m], account=world.account_of(m)) for m in members]
    resolve = verifier.resolve(first, account=world.admin)["gasUsed"]
    commit, reveal = (sum(r["gasUsed"] for r in rs) for rs in (commits, reveals))
    return {
        "draw": draw,
        "commit": commit // len(members),
        "reveal": reveal // len(members),
        "resolve": resolve,
        "total": draw + commit + reveal + resolve,
    }


if __name__ == "__main__":
    main()
