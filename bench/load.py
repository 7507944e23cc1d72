"""The network under load, on the real stack, in one run.

One devnet (Anvil, IPFS, a coordinator and six node processes serving a small seeded GPT-2 and
the real MiniLM, int8 shards on IPFS). Ten client threads, each with its own funded key, post
200 jobs in all and wait for each: generations, embeddings and forward passes, about 10% of them
malformed (inputs that are not JSON, token ids out of the vocabulary, prompts longer than the
model's context, unknown fields in the params). Malformed jobs are aborted by the coordinator
or by stage 0; once every job has ended, the chain's clock is moved past the claim window so
the coordinator's own sweep settles the aborted ones. Then the books are checked against
contract state. Prints `name: value` lines:

- jobs_total, jobs_completed, jobs_refunded (aborted or expired, escrow back less delivered stages)
- jobs_settled_ratio: completed or refunded over all (target 1.0)
- escrow_conserved: 1 when the market holds exactly the open escrows plus every account's credit
  and `shardnet audit reconcile` finds no difference (target 1)
- process_crashes: node or coordinator processes that exited (target 0)
- jobs_per_min, job_latency_ms_p50, job_latency_ms_p95 (well-formed jobs, post to result)
- node_rss_growth_mb_max and node<i>_rss_growth_mb: resident memory after the run over before
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from shardnet.audit import reconcile
from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.protocol import SETTLED, JobStatus

JOBS = int(sys.argv[1]) if len(sys.argv) > 1 else 200
CLIENTS = 10
NODES = 6
MAX_FEE = 10**15
FIRST_CLIENT = 8  # dev accounts 8..17 post jobs (0 admin, 1 coordinator, 2..7 nodes)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def job_for(rng: random.Random, gpt: int, minilm: int) -> tuple[int, object, JobParams, bool]:
    """(model, input, params, malformed)."""
    roll = rng.random()
    if roll < 0.1:  # malformed, one of several ways
        way = rng.randrange(4)
        if way == 0:
            return gpt, b"this is not json", JobParams(max_new_tokens=4), True
        if way == 1:
            return gpt, {"input_ids": [10**6, 1]}, JobParams(max_new_tokens=4), True  # out of the vocabulary
        if way == 2:
            return gpt, {"input_ids": [1] * 250}, JobParams(max_new_tokens=40), True  # past the context
        return gpt, {"input_ids": [1, 2]}, JobParams(kind="forward", wire="nonsense"), True
    if roll < 0.55:
        prompt = [rng.randrange(1, 500) for _ in range(rng.randrange(2, 12))]
        return gpt, {"input_ids": prompt}, JobParams(max_new_tokens=rng.randrange(2, 10)), False
    if roll < 0.8:
        texts = [f"sentence number {rng.randrange(1000)} about plants" for _ in range(rng.randrange(1, 4))]
        return minilm, {"texts": texts}, JobParams(kind="embed"), False
    return gpt, {"input_ids": [rng.randrange(1, 500) for _ in range(8)]}, JobParams(kind="forward"), False


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="bench-load-"))
    net = Network(home / "net", nodes=NODES).start()
    try:
        gpt, _ = net.publish("tiny-gpt2")
        minilm, _ = net.publish("minilm")
        for model_id in (gpt, minilm):
            net.wait_confirmed(model_id, NODES)
        pids = {name: proc.pid for name, proc in net.procs.items()}
        before = {name: rss_mb(pid) for name, pid in pids.items() if name.startswith("node")}
        rng = random.Random(0)
        plan = [job_for(rng, gpt, minilm) for _ in range(JOBS)]
        results: dict[int, tuple[bool, float, JobStatus]] = {}
        errors: list[str] = []
        lock = threading.Lock()

        def client_thread(k: int) -> None:
            client = Client.from_deployment(dev_account(FIRST_CLIENT + k), net.deployment)
            for i in range(k, JOBS, CLIENTS):
                model_id, job_input, params, malformed = plan[i]
                started = time.monotonic()
                try:
                    if isinstance(job_input, bytes):  # not JSON: straight to IPFS, posted by hand
                        cid = client.ipfs.add(job_input)
                        deadline = client.chain.w3.eth.get_block("latest")["timestamp"] + 600
                        job_id = client.c.market.post_job(model_id, cid, params.encode(), MAX_FEE, deadline)
                    elif malformed and params.wire == "nonsense":
                        cid = client.ipfs.add(json.dumps(job_input).encode())
                        deadline = client.chain.w3.eth.get_block("latest")["timestamp"] + 600
                        raw = json.dumps({"kind": "forward", "wire": "nonsense"}).encode()
                        job_id = client.c.market.post_job(model_id, cid, raw, MAX_FEE, deadline)
                    else:
                        job_id = client.submit(model_id, job_input, params, MAX_FEE)  # type: ignore[arg-type]
                    result = client.wait(job_id, timeout_s=300)
                except Exception as exc:  # noqa: BLE001 - counted, the run goes on
                    with lock:
                        errors.append(f"job {i}: {type(exc).__name__}: {exc}")
                    continue
                with lock:
                    results[job_id] = (malformed, (time.monotonic() - started) * 1000, result.status)

        started = time.monotonic()
        threads = [threading.Thread(target=client_thread, args=(k,)) for k in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - started
        after = {name: rss_mb(pid) for name, pid in pids.items() if name.startswith("node")}
        crashes = [name for name, proc in net.procs.items() if proc.poll() is not None]

        # aborted routed jobs settle after their claim window: move the clock, let the sweep run
        net.advance(net.c.market.claim_window_s() + 1)
        checker = Client.from_deployment(dev_account(FIRST_CLIENT), net.deployment)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            statuses = {j: checker.history(j).status for j in results}
            if all(s in SETTLED for s in statuses.values()):
                break
            time.sleep(1)
        ledger = net.settled_ledger(timeout_s=300)
        market_balance = net.chain.w3.eth.get_balance(net.c.market.address)
        held = sum(j.escrow for j in ledger.jobs.values()) + sum(a.credit for a in ledger.accounts.values())
        diffs = reconcile(net.chain, ledger)
        completed = sum(s == JobStatus.COMPLETED for s in statuses.values())
        refunded = sum(s in (JobStatus.ABORTED, JobStatus.EXPIRED, JobStatus.CANCELLED) for s in statuses.values())
        latencies = sorted(ms for malformed, ms, status in results.values() if not malformed)
        growth = {name: after[name] - before[name] for name in before}

        print(f"jobs_total: {JOBS}")
        print(f"jobs_completed: {completed}")
        print(f"jobs_refunded: {refunded}")
        print(f"jobs_settled_ratio: {(completed + refunded) / JOBS:.3f}")
        print(f"escrow_conserved: {int(market_balance == held and not diffs)}")
        print(f"process_crashes: {len(crashes)}")
        print(f"client_errors: {len(errors)}")
        print(f"jobs_per_min: {len(results) / elapsed * 60:.1f}")
        if latencies:
            print(f"job_latency_ms_p50: {statistics.median(latencies):.0f}")
            print(f"job_latency_ms_p95: {latencies[int(0.95 * (len(latencies) - 1))]:.0f}")
        print(f"node_rss_growth_mb_max: {max(growth.values()):.1f}")
        for name in sorted(growth):
            print(f"{name}_rss_growth_mb: {growth[name]:.1f}")
        for line in errors[:5]:
            print(f"  error: {line}", file=sys.stderr)
        for diff in diffs[:5]:
            print(f"  difference: {diff}", file=sys.stderr)
    finally:
        net.stop()


if __name__ == "__main__":
    main()
