"""Re-execution checks measured on the real stack, side by side in one run.

Two devnets in turn, each with a coordinator and three node processes serving a small seeded
GPT-2 (int8 shards on IPFS): one where every node is honest, one where the nodes serve garbage,
perturbed activations (1% of the norm) and wrong tokens. Every stage of every completed job is
re-run from its transcript (`node.verifier.check_job`, what a committee member runs). Jobs mix
generation and forward passes, int8 and fp32 activations. Prints `name: value` lines:

- honest_stages_checked: honest stages re-run (target >= 300)
- false_slash_rate: honest stages judged dishonest (target 0)
- honest_worst_relative_error, tolerance: the margin the verdicts stand on
- detection_rate_min: over the misbehaviours, the lowest share of corrupted stages caught (target 1.0)
- verify_compute_ratio: a verifier's time to re-run and judge a stage over the time to run the
  same span on the same inputs (target <= 1.1)

(The on-chain audit, committee draw, slashing and their gas come with the committee contract.)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from node.executor import Executor
from node.messages import unpack
from node.verifier import TOLERANCE, StageClaim, check_job, verify_stage
from shardnet.chain import dev_account
from shardnet.client import Client, JobResult
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.model.quant import decode_activation
from shardnet.protocol import JobStatus, Span
from shardnet.transcripts import Transcript

MODEL = "tiny-gpt2"
HONEST_JOBS = 100  # x 3 stages
CHEAT_JOBS = 20
MODES = {0: "garbage", 1: "perturb", 2: "wrong_token"}
MAX_FEE = 10**16


def run_jobs(net: Network, client: Client, model_id: int, count: int) -> list[tuple[JobParams, JobResult]]:
    jobs = []
    for i in range(count):
        wire = "int8" if i % 2 else "fp32"
        params = (
            JobParams(kind="generate", max_new_tokens=4, wire=wire) if i % 3 else JobParams(kind="forward", wire=wire)
        )
        prompt = [(13 * i + j) % 400 + 1 for j in range(2 + i % 5)]
        jobs.append((params, client.submit(model_id, {"input_ids": prompt}, params, MAX_FEE)))
    return [(params, client.wait(job_id, timeout_s=300)) for params, job_id in jobs]


def check(net: Network, manifest_cid: str, params: JobParams, result: JobResult) -> list:
    r = result.record
    assert result.status == JobStatus.COMPLETED and result.output is not None and r.coordinator is not None
    executor = Executor(net.ipfs, 20.0)
    receipts = [(x.input_hash, x.output_hash) for x in r.receipts]
    return check_job(
        executor,
        r.job_id,
        r.model_id,
        manifest_cid,
        r.input_cid,
        r.route,
        r.coordinator,
        params,
        receipts,
        result.output,
    )


def compute_ratio(net: Network, manifest_cid: str, params: JobParams, result: JobResult) -> float:
    """Verifying the middle stage vs running its span on the same inputs, in this process."""
    r = result.record
    assert result.output is not None and r.coordinator is not None
    executor = Executor(net.ipfs, 20.0)
    stage = r.route[1]
    loaded = executor.load(r.model_id, manifest_cid, Span(stage.start, stage.end))
    transcript = Transcript.decode(net.ipfs.cat(result.output["transcripts"][1]))
    claim = StageClaim(r.job_id, r.model_id, 1, r.route, r.coordinator, params, transcript, result.output)
    inputs = [decode_activation(unpack(body)[1]) for body in transcript.received]
    best_run, best_verify = float("inf"), float("inf")
    for _ in range(5):
        session = loaded.model.new_session() if params.kind == "generate" else None
        started = time.perf_counter()
        for x in inputs:
            loaded.model(x, session=session, start=stage.start)
        best_run = min(best_run, time.perf_counter() - started)
        started = time.perf_counter()
        verify_stage(executor, loaded, claim)
        best_verify = min(best_verify, time.perf_counter() - started)
    return best_verify / best_run


def network(home: Path, modes: dict[int, str]) -> tuple[Network, int, str, Client]:
    net = Network(home, node_overrides={i: {"misbehave": m} for i, m in modes.items()}).start()
    model_id, manifest_cid = net.publish(MODEL)
    net.wait_confirmed(model_id, 3)
    return net, model_id, manifest_cid, Client.from_deployment(dev_account(12), net.deployment)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="shardnet-bench-verify-") as tmp:
        net, model_id, manifest_cid, client = network(Path(tmp) / "honest", {})
        try:
            honest = run_jobs(net, client, model_id, HONEST_JOBS)
            verdicts = [v for params, result in honest for v in check(net, manifest_cid, params, result)]
            forward = next((p, r) for p, r in honest if p.kind == "forward" and p.wire == "int8")
            ratio = compute_ratio(net, manifest_cid, *forward)
        finally:
            net.stop()
        print(f"honest_stages_checked: {len(verdicts)}")
        print(f"false_slash_rate: {sum(not v.honest for v in verdicts) / len(verdicts):.4f}")
        print(f"honest_worst_relative_error: {max(v.worst_error for v in verdicts):.2e}")
        print(f"tolerance: {TOLERANCE:.0e}")
        print(f"verify_compute_ratio: {ratio:.3f}")

        net, model_id, manifest_cid, client = network(Path(tmp) / "cheats", MODES)
        try:
            cheats = run_jobs(net, client, model_id, CHEAT_JOBS)
            node_mode = {dev_account(2 + i).address: m for i, m in MODES.items()}
            caught: dict[str, list[bool]] = {}
            for params, result in cheats:
                route = result.record.route
                for k, verdict in enumerate(check(net, manifest_cid, params, result)):
                    mode, last = node_mode[route[k].node], k == len(route) - 1
                    corrupted = mode == "garbage" or (mode == "perturb" and not (last and params.kind == "generate"))
                    corrupted |= mode == "wrong_token" and last and params.kind == "generate"
                    if corrupted:
                        caught.setdefault(mode, []).append(not verdict.honest)
        finally:
            net.stop()
        for mode, hits in sorted(caught.items()):
            print(f"detection_rate_{mode}: {sum(hits) / len(hits):.3f} ({len(hits)} stages)")
        print(f"detection_rate_min: {min(sum(h) / len(h) for h in caught.values()):.3f}")


if __name__ == "__main__":
    main()
