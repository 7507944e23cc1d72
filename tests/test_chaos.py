"""Chaos during load, on the real stack: while three clients post generations and forward
passes (some malformed) to four nodes that each run their own IPFS daemon, a random node is
killed with SIGKILL, then the coordinator, then another node's IPFS daemon, and Anvil is
restarted from its saved state; each comes back a few seconds later. Every job posted still
settles (completed, or refunded by an abort or by the coordinator's own expiry sweep), no job
pays out more than its escrow, the market holds exactly what the books say, and the auditor's
`reconcile` finds no difference."""

import random
import threading
import time

import pytest

from shardnet.audit import reconcile
from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.protocol import SETTLED, JobStatus

pytestmark = pytest.mark.stack

NODES = 4
CLIENTS = 3
JOBS_PER_CLIENT = 8
MAX_FEE = 10**15
POSTING_S = 120  # clients post (and wait on) jobs for at most this long


def _job(rng):
    roll = rng.random()
    if roll < 0.15:  # malformed: out of the vocabulary, or past the model's context
        ids = [10**6, 1] if rng.random() < 0.5 else [1] * 250
        return {"input_ids": ids}, JobParams(max_new_tokens=40)
    if roll < 0.7:
        prompt = [rng.randrange(1, 500) for _ in range(rng.randrange(2, 10))]
        return {"input_ids": prompt}, JobParams(max_new_tokens=rng.randrange(2, 8))
    return {"input_ids": [rng.randrange(1, 500) for _ in range(8)]}, JobParams(kind="forward")


def test_every_job_settles_through_kills_and_a_chain_restart(tmp_path):
    net = Network(tmp_path / "net", nodes=NODES, own_ipfs=True).start()
    try:
        model_id, _ = net.publish("tiny-gpt2")
        net.wait_confirmed(model_id, NODES)
        rng = random.Random(7)
        errors: list[str] = []

        posting_ends = time.monotonic() + POSTING_S  # a network that does not recover fails below, in time

        def client_thread(k: int) -> None:
            client = Client.from_deployment(dev_account(12 + k), net.deployment)
            local = random.Random(k)
            for _ in range(JOBS_PER_CLIENT):
                if (left := posting_ends - time.monotonic()) < 1:
                    return
                job_input, params = _job(local)
                try:
                    client.wait(client.submit(model_id, job_input, params, MAX_FEE), timeout_s=min(60, left))
                except Exception as exc:  # noqa: BLE001 - the chain may be down: the job is judged from events
                    errors.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(1)

        threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        victim, ipfs_victim = rng.sample(range(NODES), 2)
        time.sleep(4)
        net.kill(f"node{victim}")  # SIGKILL
        time.sleep(2)
        net.kill("coordinator")
        time.sleep(2)
        net.kill_ipfs(ipfs_victim)
        time.sleep(2)
        net.restart_chain()
        time.sleep(3)
        net.start_coordinator()
        net.restart_ipfs(ipfs_victim)
        net.start_node(victim)
        for t in threads:
            t.join()

        # jobs that could not finish are settled by the coordinator's sweep once overdue: move
        # the chain's clock past every deadline and claim window
        net.advance(600 + net.c.market.claim_window_s() + 5)
        checker = Client.from_deployment(dev_account(12), net.deployment)
        jobs = sorted(net.ledger().jobs)
        assert len(jobs) >= CLIENTS * JOBS_PER_CLIENT // 2, errors
        deadline = time.monotonic() + 240
        while (
            open_jobs := [j for j in jobs if checker.history(j).status not in SETTLED]
        ) and time.monotonic() < deadline:
            time.sleep(1)
        assert not open_jobs, f"jobs {open_jobs} never settled; logs in {net.home}"
        ledger = net.settled_ledger(timeout_s=240)
        statuses = [ledger.jobs[j].status for j in jobs]
        print(f"{len(jobs)} jobs: " + ", ".join(f"{s.name.lower()} {statuses.count(s)}" for s in set(statuses)))
        assert statuses.count(JobStatus.COMPLETED) >= len(jobs) // 3, statuses
        for j in jobs:  # nobody paid twice: a job pays out at most its escrow, every wei accounted for
            job = ledger.jobs[j]
            assert sum(job.payouts.values()) + job.refunded + job.verification <= job.max_fee, j
        market = net.chain.w3.eth.get_balance(net.c.market.address)
        held = sum(j.escrow for j in ledger.jobs.values()) + sum(a.credit for a in ledger.accounts.values())
        assert market == held
        assert reconcile(net.chain, ledger) == []
        assert all(proc.poll() is None for proc in net.procs.values()), "a process crashed"
    finally:
        net.stop()
