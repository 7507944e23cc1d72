"""Re-execution checks measured on the real stack, side by side in one run.

Devnets in turn, each with a coordinator and three node processes serving a small seeded GPT-2
(int8 shards on IPFS): one where every node is honest, then one per misbehaviour where every
node serves garbage, skips its blocks, adds noise of 1% of the activation norm, or returns
wrong tokens. Every stage of every completed job is re-run from its transcript
(`node.verifier.check_job`, what a committee member runs). Jobs mix generation and forward
passes, int8 and fp32 activations. Prints `name: value` lines:

- honest_stages_checked: honest stages re-run (target >= 300)
- false_slash_rate: honest stages judged dishonest (target 0)
- honest_worst_relative_error, tolerance: the margin the verdicts stand on
- detection_rate_<mode>, detection_rate_min: the share of corrupted stages caught (target 1.0)
- verify_compute_ratio: a verifier's time to re-run and judge the middle stage of a 128-token
  forward over the stage's own work on the same messages (target <= 1.1)

(The on-chain audit, committee draw, slashing and their gas come with the committee contract.)
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from node.executor import Executor
from node.messages import unpack
from node.verifier import TOLERANCE, SpanCache, StageClaim, check_job, verify_stage
from shardnet.chain import dev_account
from shardnet.client import Client, JobResult
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.model.quant import decode_activation, encode_activation
from shardnet.protocol import JobStatus, Span
from shardnet.transcripts import Transcript

MODEL = "tiny-gpt2"
HONEST_JOBS = 100  # x 3 stages
CHEAT_JOBS = 10  # per misbehaviour
MODES = ("garbage", "lazy", "perturb", "wrong_token")
RATIO_TOKENS = 128  # the forward job the verifier's compute is timed on
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


def check(net: Network, manifest_cid: str, result: JobResult, spans: SpanCache) -> list:
    assert result.status == JobStatus.COMPLETED and result.output is not None
    return check_job(Executor(net.ipfs, 20.0), result.record, manifest_cid, result.output, spans)


def compute_ratio(net: Network, manifest_cid: str, params: JobParams, result: JobResult) -> float:
    """Verifying the middle stage over what the stage itself does for the same messages (decode
    its input, run its span, encode its output), both in this process, best of 5."""
    r = result.record
    assert result.output is not None and r.coordinator is not None
    executor = Executor(net.ipfs, 20.0)
    stage = r.route[1]
    loaded = executor.load(r.model_id, manifest_cid, Span(stage.start, stage.end), serve=False)
    transcript = Transcript.decode(net.ipfs.cat(result.output["transcripts"][1]))
    claim = StageClaim(r.job_id, r.model_id, 1, r.route, r.coordinator, params, transcript, result.output)
    best_run, best_verify = float("inf"), float("inf")
    for _ in range(5):
        session = loaded.model.new_session() if params.kind == "generate" else None
        started = time.perf_counter()
        for body in transcript.received:
            out = loaded.model(decode_activation(unpack(body)[1]), session=session, start=stage.start)
            encode_activation(out, params.wire)
        best_run = min(best_run, time.perf_counter() - started)
        started = time.perf_counter()
        verify_stage(executor, loaded, claim)
        best_verify = min(best_verify, time.perf_counter() - started)
    return best_verify / best_run


def network(home: Path, modes: dict[int, str]) -> tuple[Network, int, str, Client]:
    """A devnet, a coordinator and three nodes (`modes`: node index -> misbehaviour) serving MODEL."""
    net = Network(home, node_overrides={i: {"misbehave": m} for i, m in modes.items()}).start()
    model_id, manifest_cid = net.publish(MODEL)
    net.wait_confirmed(model_id, 3)
    return net, model_id, manifest_cid, Client.from_deployment(dev_account(12), net.deployment)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="shardnet-bench-verify-") as tmp:
        net, model_id, manifest_cid, client = network(Path(tmp) / "honest", {})
        spans: SpanCache = {}  # per network: model ids repeat across devnets
        try:
            honest = run_jobs(net, client, model_id, HONEST_JOBS)
            verdicts = [v for params, result in honest for v in check(net, manifest_cid, result, spans)]
            params = JobParams(kind="forward", wire="int8")
            long_prompt = {"input_ids": [(7 * j) % 400 + 1 for j in range(RATIO_TOKENS)]}
            long_job = client.wait(client.submit(model_id, long_prompt, params, MAX_FEE), timeout_s=300)
            ratio = compute_ratio(net, manifest_cid, params, long_job)
        finally:
            net.stop()
        print(f"honest_stages_checked: {len(verdicts)}")
        print(f"false_slash_rate: {sum(not v.honest for v in verdicts) / len(verdicts):.4f}")
        print(f"honest_worst_relative_error: {max(v.worst_error for v in verdicts):.2e}")
        print(f"tolerance: {TOLERANCE:.0e}")
        print(f"verify_compute_ratio: {ratio:.3f}")

        caught: dict[str, list[bool]] = {}
        for mode in MODES:  # every node misbehaves the same way, so the mode is tried at every position
            net, model_id, manifest_cid, client = network(Path(tmp) / mode, dict.fromkeys(range(3), mode))
            spans = {}
            try:
                for params, result in run_jobs(net, client, model_id, CHEAT_JOBS):
                    route = result.record.route
                    for k, verdict in enumerate(check(net, manifest_cid, result, spans)):
                        if corrupts(mode, k, len(route), params.kind):
                            caught.setdefault(mode, []).append(not verdict.honest)
            finally:
                net.stop()
        for mode, hits in sorted(caught.items()):
            print(f"detection_rate_{mode}: {sum(hits) / len(hits):.3f} ({len(hits)} stages)")
        print(f"detection_rate_min: {min(sum(h) / len(h) for h in caught.values()):.3f}")


def corrupts(mode: str, stage: int, stages: int, kind: str) -> bool:
    """Whether a stage run in `mode` changes what it claims (lazy cannot skip the embedding or
    head, whose outputs differ in shape from their inputs; 1% noise on the logits of a greedy
    generation may leave every token as it was)."""
    last = stage == stages - 1
    if mode == "garbage":
        return True
    if mode == "lazy":
        return 0 < stage < stages - 1
    if mode == "perturb":
        return not (last and kind == "generate")
    return last and kind == "generate"


if __name__ == "__main__":
    main()
