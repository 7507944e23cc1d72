"""The auditor's index over a long history, measured on a private devnet (real Anvil, real
contracts): a history of >= 10,000 events (whole jobs: posted, routed, receipts submitted,
stages and coordinator paid, rest refunded) is written first, then indexed from scratch.

Prints `name: value` lines:
- events_per_s_indexed: events fetched, decoded and stored per second by a fresh `audit sync`
- job_query_ms_p50 / _p99: one job's full view (row, stages with receipts, payouts, timeline)
- jobs_by_client_ms_p50: a filtered job list
- replay_ms: the same question answered without the index (every event re-read from the RPC
  and replayed), and job_query_speedup_vs_replay, measured side by side in this run
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

from eth_utils import keccak

from shardnet import devnet as dn
from shardnet.audit import build_ledger
from shardnet.chain import Chain, dev_account
from shardnet.indexer import Index
from shardnet.receipts import output_hash_of
from shardnet.scenario import World

TARGET_EVENTS = 10_000
EVENTS_PER_JOB = 8  # posted, routed, result, 3 x stage paid, coordinator paid, refunded
TARGET_QUERY_MS = 20
MAX_FEE = 10**15


class Sender:
    """Signs and sends transactions without estimating gas or waiting (Anvil mines each at once)."""

    def __init__(self, chain: Chain):
        self.chain, self.nonces, self.sent = chain, {}, []

    def send(self, fn, account, value: int = 0, gas: int = 1_500_000) -> None:
        nonce = self.nonces.get(account.address)
        if nonce is None:
            nonce = self.chain.w3.eth.get_transaction_count(account.address)
        tx = fn.build_transaction(
            {
                "from": account.address,
                "nonce": nonce,
                "gas": gas,
                "value": value,
                "chainId": self.chain.chain_id,
                "maxFeePerGas": 10**10,
                "maxPriorityFeePerGas": 10**9,
            }
        )
        self.nonces[account.address] = nonce + 1
        self.sent.append(self.chain.w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction))


def write_history(world: World, jobs: int) -> None:
    market = world.contracts.market
    nodes = world.register_nodes(3)
    model = world.register_model(12, price_per_block=10**12, name="bench-model")
    spans = world.assign_even(model, nodes, 12)
    stages = world.stages(nodes, spans, 10**12)
    clients = [dev_account(i) for i in range(12, 18)]
    sender = Sender(world.chain)
    deadline = world.chain.w3.eth.get_block("latest")["timestamp"] + 86_400
    first = market.job_count() + 1
    f = market.contract.functions
    for job in range(first, first + jobs):
        client = clients[job % len(clients)]
        sender.send(f.postJob(model, "QmInput", b'{"kind":"forward"}', MAX_FEE, deadline), client, value=MAX_FEE)
        sender.send(f.routeJob(job, [tuple(s) for s in stages]), world.coordinator)
        out = f"QmOut{job}"
        hashes = [keccak(text=f"job{job}-{k}") for k in range(len(stages))] + [output_hash_of(out)]
        receipts = [
            market.receipts.sign(n, job, k, s, world.coordinator.address, hashes[k], hashes[k + 1])
            for k, (n, s) in enumerate(zip(nodes, stages, strict=True))
        ]
        sender.send(
            f.submitResult(
                job, world.coordinator.address, [tuple(s) for s in stages], out, [tuple(r) for r in receipts]
            ),
            nodes[-1],
        )
    last = world.chain.w3.eth.wait_for_transaction_receipt(sender.sent[-1])
    if last["status"] != 1 or market.job(first + jobs - 1).status.name != "COMPLETED":
        raise SystemExit("the history did not apply: a transaction reverted")


def main() -> None:
    jobs = -(-TARGET_EVENTS // EVENTS_PER_JOB)
    with dn.temporary() as (deployment, settings):
        chain = Chain.from_deployment(deployment, account=dev_account(0))
        started = time.perf_counter()
        write_history(World.of(chain), jobs)
        written_s = time.perf_counter() - started
        with Index(Path(settings.home) / "index.sqlite", chain) as index:
            report = index.sync()
            rng = random.Random(7)
            ids = [rng.randint(1, jobs) for _ in range(500)]
            job_ms = []
            for job_id in ids:
                t = time.perf_counter()
                view = index.job(job_id)
                job_ms.append((time.perf_counter() - t) * 1000)
                assert view is not None and view["status"] == "completed" and len(view["timeline"]) == 8
            clients = [dev_account(i).address for i in range(12, 18)]
            list_ms = []
            for client in clients * 10:
                t = time.perf_counter()
                rows = index.jobs(client=client, status="completed")
                list_ms.append((time.perf_counter() - t) * 1000)
                assert rows
            events = index.summary()["events"]
        t = time.perf_counter()
        ledger = build_ledger(chain)
        replay_ms = (time.perf_counter() - t) * 1000
        assert len(ledger.jobs) == jobs

    p50 = statistics.median(job_ms)
    print(f"history_events: {events}")
    print(f"history_jobs: {jobs}")
    print(f"history_write_s: {written_s:.1f}")
    print(f"index_sync_s: {report.seconds:.2f}")
    print(f"events_per_s_indexed: {report.events / report.seconds:.0f}")
    print(f"job_query_ms_p50: {p50:.3f}")
    print(f"job_query_ms_p99: {statistics.quantiles(job_ms, n=100)[98]:.3f}")
    print(f"job_query_ms_p50_vs_target: {p50 / TARGET_QUERY_MS:.3f}")
    print(f"jobs_by_client_ms_p50: {statistics.median(list_ms):.3f}")
    print(f"replay_ms: {replay_ms:.0f}")
    print(f"job_query_speedup_vs_replay: {replay_ms / p50:.0f}")


if __name__ == "__main__":
    main()
