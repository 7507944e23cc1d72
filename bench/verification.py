"""Re-execution checks measured on the real stack, side by side in one run: audits drawn,
committees voting and slashes taken on-chain by the node processes themselves.

Devnets in turn, each with a coordinator and node processes serving a small seeded GPT-2 (int8
shards on IPFS), every job posted with audit_rate 1.0 (every stage re-run by a committee of the
other nodes, which commits, reveals and resolves on-chain):
- honest: four honest nodes, two of them with 2 torch threads; jobs mix generation and forward
  passes, int8 and fp32 activations;
- one per serving misbehaviour, every node serving garbage, skipping its blocks, adding noise of
  1% of the activation norm, or returning wrong tokens (so each is tried at every position);
- committee misbehaviours: four honest servers, one voting against its own check (lie_vote),
  one never revealing (absent).
Prints `name: value` lines:

- honest_stages_checked: honest stages audited on-chain (target >= 300)
- false_slash_rate: honest stages found wrong (target 0)
- honest_worst_relative_error, tolerance: the margin the verdicts stand on (re-run here too)
- detection_rate_<mode>, detection_rate_min: corrupted stages found wrong and slashed, and liars
  outvoted / absent members recorded failed, over the audits they were in (target 1.0)
- verify_compute_ratio: a verifier's time to re-run and judge the middle stage of a 128-token
  forward over the stage's own work on the same messages (target <= 1.1)
- committee_size and p_dishonest_majority_<share>: the chance a drawn committee has a dishonest
  majority when that share of the stake is dishonest (uniform draw over equally staked nodes)
- cheater_expected_loss_over_gain: at the network's default audit rate, a cheating stage's
  expected loss (slash and forfeited fee) over what it could save (at most its fee), for the
  fee where this is smallest (target >= 2)
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import torch

from node.executor import Executor
from node.messages import unpack
from node.verifier import TOLERANCE, SpanCache, StageClaim, check_job, verify_stage
from shardnet.chain import dev_account
from shardnet.client import Client, JobResult
from shardnet.jobs import JobParams
from shardnet.ledger import AuditRecord
from shardnet.localnet import Network
from shardnet.model.quant import decode_activation, encode_activation
from shardnet.protocol import JobStatus, Span
from shardnet.transcripts import Transcript

MODEL = "tiny-gpt2"
HONEST_JOBS = 100  # x 3 stages
CHEAT_JOBS = 30  # per misbehaviour (20 of them generate: wrong_token corrupts only those)
MODES = ("garbage", "lazy", "perturb", "wrong_token")
BATCH = 10  # jobs in flight at once
STAKE = 10 * 10**18  # enough for a slash per stage per job
RATIO_TOKENS = 128  # the forward job the verifier's compute is timed on
MAX_FEE = 10**16


def run_jobs(net: Network, client: Client, model_id: int, count: int) -> list[tuple[JobParams, JobResult]]:
    """`count` jobs at audit rate 1.0, `BATCH` at a time; returns them once every audit resolved."""
    done: list[tuple[JobParams, JobResult]] = []
    for first in range(0, count, BATCH):
        jobs = []
        for i in range(first, min(count, first + BATCH)):
            wire = "int8" if i % 2 else "fp32"
            params = (
                JobParams(kind="generate", max_new_tokens=4, wire=wire, audit_rate=1.0)
                if i % 3
                else JobParams(kind="forward", wire=wire, audit_rate=1.0)
            )
            prompt = [(13 * i + j) % 400 + 1 for j in range(2 + i % 5)]
            jobs.append((params, client.submit(model_id, {"input_ids": prompt}, params, MAX_FEE)))
        done += [(params, client.wait(job_id, timeout_s=300)) for params, job_id in jobs]
        audits_of(net, [r.record.job_id for _, r in done[first:]])
    return done


def audits_of(net: Network, job_ids: list[int]) -> dict[int, list[AuditRecord]]:
    """Each job's audits, one per stage, once every one of them resolved."""
    return net.resolved_audits(job_ids, every_stage=True, timeout_s=300)[1]


def check(net: Network, manifest_cid: str, result: JobResult, spans: SpanCache) -> list:
    assert result.status == JobStatus.COMPLETED and result.output is not None
    return check_job(Executor(net.ipfs, 20.0), result.record, manifest_cid, result.output, spans)


def compute_ratio(net: Network, manifest_cid: str, params: JobParams, result: JobResult) -> float:
    """Verifying the middle stage over what the stage itself does for the same messages (read the
    header and mask, decode its input, run its span, encode its output), both in this process,
    interleaved, best of 9, once the network is at rest (its nodes audit in the background, which
    would load the machine)."""
    net.settled_ledger()
    r = result.record
    assert result.output is not None and r.coordinator is not None
    executor = Executor(net.ipfs, 20.0)
    stage = r.route[1]
    loaded = executor.load(r.model_id, manifest_cid, Span(stage.start, stage.end))
    transcript = Transcript.decode(net.ipfs.cat(result.output["transcripts"][1]))
    claim = StageClaim(r.job_id, r.model_id, 1, r.route, r.coordinator, params, transcript, result.output)
    best_run, best_verify = float("inf"), float("inf")
    for _ in range(9):
        session = loaded.model.new_session() if params.kind == "generate" else None
        started = time.perf_counter()
        for body in transcript.received:  # what the stage's pipeline does with each message
            header, payload = unpack(body)
            mask = torch.tensor(header["mask"]) if "mask" in header else None
            out = loaded.model(decode_activation(payload), attention_mask=mask, session=session, start=stage.start)
            encode_activation(out, params.wire)
        best_run = min(best_run, time.perf_counter() - started)
        started = time.perf_counter()
        verify_stage(executor, loaded, claim)
        best_verify = min(best_verify, time.perf_counter() - started)
    return best_verify / best_run


def network(home: Path, nodes: int, overrides: dict[int, dict]) -> tuple[Network, int, str, Client]:
    """A devnet, a coordinator and `nodes` nodes (`overrides`: node index -> settings) serving MODEL."""
    every = {i: {"stake_wei": STAKE, **overrides.get(i, {})} for i in range(nodes)}
    net = Network(home, nodes=nodes, node_overrides=every).start()
    model_id, manifest_cid = net.publish(MODEL)
    net.wait_confirmed(model_id, nodes)
    return net, model_id, manifest_cid, Client.from_deployment(dev_account(12), net.deployment)


def p_dishonest_majority(size: int, share: float) -> float:
    """The chance that more than half of `size` members drawn are dishonest (binomial draw)."""
    need = size // 2 + 1
    return sum(math.comb(size, k) * share**k * (1 - share) ** (size - k) for k in range(need, size + 1))


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="shardnet-bench-verify-") as tmp:
        threads = {1: {"torch_threads": 2}, 3: {"torch_threads": 2}}
        net, model_id, manifest_cid, client = network(Path(tmp) / "honest", 4, threads)
        spans: SpanCache = {}  # per network: model ids repeat across devnets
        try:
            terms, penalties = net.c.market.terms(), net.c.verifier.penalties()
            honest = run_jobs(net, client, model_id, HONEST_JOBS)
            audits = [a for job in audits_of(net, [r.record.job_id for _, r in honest]).values() for a in job]
            verdicts = [v for params, result in honest[:30] for v in check(net, manifest_cid, result, spans)]
            params = JobParams(kind="forward", wire="int8")
            long_prompt = {"input_ids": [(7 * j) % 400 + 1 for j in range(RATIO_TOKENS)]}
            long_job = client.wait(client.submit(model_id, long_prompt, params, MAX_FEE), timeout_s=300)
            ratio = compute_ratio(net, manifest_cid, params, long_job)
        finally:
            net.stop()
        print(f"honest_stages_checked: {len(audits)}", flush=True)
        print(f"false_slash_rate: {sum(a.upheld for a in audits) / len(audits):.4f}")
        print(f"honest_worst_relative_error: {max(v.worst_error for v in verdicts):.2e}")
        print(f"tolerance: {TOLERANCE:.0e}")
        print(f"verify_compute_ratio: {ratio:.3f}", flush=True)

        caught: dict[str, list[bool]] = {}
        for mode in MODES:  # every node misbehaves the same way, so the mode is tried at every position
            overrides = {i: {"misbehave": mode} for i in range(3)}
            net, model_id, manifest_cid, client = network(Path(tmp) / mode, 3, overrides)
            try:
                results = run_jobs(net, client, model_id, CHEAT_JOBS)
                by_job = audits_of(net, [r.record.job_id for _, r in results])
                for params, result in results:
                    route = result.record.route
                    for a in by_job[result.record.job_id]:
                        if corrupts(mode, a.stage, len(route), params.kind):
                            caught.setdefault(mode, []).append(a.upheld and a.slashed > 0)
            finally:
                net.stop()
            hits = caught.get(mode, [])
            print(f"detection_rate_{mode}: {sum(hits) / max(1, len(hits)):.3f} ({len(hits)} stages)", flush=True)
        liar, absent = dev_account(2 + 2).address, dev_account(2 + 3).address
        overrides = {2: {"misbehave": "lie_vote"}, 3: {"misbehave": "absent"}}
        net, model_id, manifest_cid, client = network(Path(tmp) / "committee", 4, overrides)
        try:
            results = run_jobs(net, client, model_id, CHEAT_JOBS)
            for job in audits_of(net, [r.record.job_id for _, r in results]).values():
                for a in job:
                    if liar in a.members:
                        caught.setdefault("lie_vote", []).append(a.outvoted.get(liar, 0) > 0)
                    if absent in a.members:
                        caught.setdefault("absent", []).append(absent in a.absent)
        finally:
            net.stop()
        for mode in ("lie_vote", "absent"):
            hits = caught.get(mode, [])
            print(f"detection_rate_{mode}: {sum(hits) / max(1, len(hits)):.3f} ({len(hits)} committee seats)")
        print(f"detection_rate_min: {min(sum(h) / len(h) for h in caught.values()):.3f}")

    size = terms.committee_size
    print(f"committee_size: {size}")
    for share in (0.10, 0.33):
        print(f"p_dishonest_majority_{round(share * 100)}pct: {p_dishonest_majority(size, share):.4f}")
        print(f"p_dishonest_majority_{round(share * 100)}pct_committee_7: {p_dishonest_majority(7, share):.4f}")
    rate = terms.min_audit_bps / 10_000
    min_slash, multiple = penalties[0], penalties[1]
    # loss / gain = rate * (max(min_slash, multiple * fee) + fee) / fee, smallest as the fee grows
    print(f"default_audit_rate: {rate}")
    print(f"cheater_expected_loss_over_gain: {rate * (multiple + 1):.2f}")
    devnet_fee = 2 * 10**9  # a two-block stage at the bench's price
    bench_ratio = rate * (max(min_slash, multiple * devnet_fee) + devnet_fee) / devnet_fee
    print(f"cheater_expected_loss_over_gain_bench_stage: {bench_ratio:.3g}")


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
