"""The network's speed against the same model in one process, measured side by side in one run.

A devnet, three node processes (one torch thread each) and a GPT-2-small-sized model
(124M parameters, seeded weights, int8 shards on IPFS) cut into three spans. The bench
routes jobs itself (as the coordinator account) so it knows when each JobRouted event was
emitted. Prints `name: value` lines:

- forward_latency_ratio_3_stages: data-plane time of a 128-token forward across the three
  nodes (stage 0 start to last stage done, int8 activations over HTTP) over the same forward
  in this process (one torch thread, whole model from the same shards). Target <= 1.15.
- generation_tokps_ratio: tokens/s of a 32-token greedy generation across the nodes (KV cache
  at every stage, the token loop going round the route) over in-process with KV cache.
  Target >= 0.8.
- event_to_pickup_ms_p50: JobRouted mined to stage 0 acting on it. Target <= 50.
- chain_overhead_ms_per_job: client-observed job time minus its data-plane time (post,
  routing, IPFS input/output, receipts, result transaction, client polling).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.model.manifest import fetch_manifest
from shardnet.model.shards import fetch_span
from shardnet.model.span import SpanModel
from shardnet.protocol import Span, Stage

MODEL = "gpt2-small"
FORWARD_TOKENS = 128
PROMPT_TOKENS = 16
NEW_TOKENS = 32
RUNS = 5
MAX_FEE = 10**16


def route_now(net: Network, job_id: int, stages: list[Stage]) -> float:
    """Send routeJob as the coordinator; returns the wall time at which it was mined (Anvil automine)."""
    chain, coordinator = net.chain, dev_account(1)
    fn = net.c.market.contract.functions.routeJob(job_id, [tuple(s) for s in stages])
    tx = fn.build_transaction(
        {
            "from": coordinator.address,
            "chainId": chain.chain_id,
            "nonce": chain.w3.eth.get_transaction_count(coordinator.address, "pending"),
        }
    )
    raw = coordinator.sign_transaction(tx).raw_transaction
    tx_hash = chain.w3.eth.send_raw_transaction(raw)
    mined_at = time.time()
    chain.w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.01)
    return mined_at


def run_job(net, client, model_id, stages, job_input, params):
    started = time.time()
    job_id = client.submit(model_id, job_input, params, MAX_FEE)
    routed_at = route_now(net, job_id, stages)
    result = client.wait(job_id, timeout_s=300, poll_s=0.05)
    total_ms = (time.time() - started) * 1000
    timing = result.output["timing"]
    return result, total_ms, timing["data_plane_ms"], (timing["picked_up_at"] - routed_at) * 1000


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as home:
        net = Network(Path(home), coordinator=False, ipfs_timeout_s=60).start()
        try:
            model_id, manifest_cid = net.publish(MODEL, price_per_block=10**9)
            manifest = fetch_manifest(net.ipfs, manifest_cid)
            blocks = len(manifest.blocks)
            nodes = [dev_account(2 + i).address for i in range(3)]
            spans = [Span(0, 5), Span(5, 10), Span(10, blocks)]
            for node, span in zip(nodes, spans, strict=True):
                net.c.models.assign_shard(model_id, node, span.start, span.end, account=dev_account(1))
            net.wait_confirmed(model_id, 3, timeout_s=600)
            stages = [Stage(n, s.start, s.end, 10**9 * len(s)) for n, s in zip(nodes, spans, strict=True)]
            client = Client.from_deployment(dev_account(12), net.deployment)

            # in-process baseline: the whole model from the same shards, one torch thread
            torch.set_num_threads(1)
            whole = SpanModel(manifest.config, Span(0, blocks), fetch_span(net.ipfs, manifest, Span(0, blocks)))
            vocab = manifest.config.vocab_size

            fwd_local, fwd_dist, pickups, overheads = [], [], [], []
            for i in range(RUNS + 1):
                ids = torch.randint(0, vocab, (1, FORWARD_TOKENS), generator=torch.Generator().manual_seed(i))
                t = time.perf_counter()
                whole(ids)
                local_ms = (time.perf_counter() - t) * 1000
                _, total, dp, pickup = run_job(
                    net, client, model_id, stages, {"input_ids": ids[0].tolist()}, JobParams(kind="forward")
                )
                if i:  # the first run warms caches on every side
                    fwd_local.append(local_ms)
                    fwd_dist.append(dp)
                    pickups.append(pickup)
                    overheads.append(total - dp)

            gen_local, gen_dist = [], []
            for i in range(RUNS + 1):
                prompt = torch.randint(0, vocab, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(100 + i))
                t = time.perf_counter()
                session, x = whole.new_session(), prompt
                for _ in range(NEW_TOKENS):
                    x = whole(x, session=session)[:, -1:].argmax(-1)
                local_ms = (time.perf_counter() - t) * 1000
                result, total, dp, pickup = run_job(
                    net,
                    client,
                    model_id,
                    stages,
                    {"input_ids": prompt[0].tolist()},
                    JobParams(kind="generate", max_new_tokens=NEW_TOKENS),
                )
                assert len(result.output["tokens"]) == NEW_TOKENS
                if i:
                    gen_local.append(local_ms)
                    gen_dist.append(dp)
                    pickups.append(pickup)
                    overheads.append(total - dp)
        finally:
            net.stop()

    med = statistics.median
    print(
        f"model: {MODEL} ({sum(p.numel() for p in whole.parameters()) / 1e6:.0f}M parameters, {blocks} blocks, "
        f"spans {[(s.start, s.end) for s in spans]})"
    )
    print(f"forward_ms_in_process_128_tokens: {med(fwd_local):.1f}")
    print(f"forward_ms_3_stages_128_tokens: {med(fwd_dist):.1f}")
    print(f"forward_latency_ratio_3_stages: {med(fwd_dist) / med(fwd_local):.3f}")
    print(f"generation_tokps_in_process: {NEW_TOKENS / (med(gen_local) / 1000):.1f}")
    print(f"generation_tokps_3_stages: {NEW_TOKENS / (med(gen_dist) / 1000):.1f}")
    print(f"generation_tokps_ratio: {med(gen_local) / med(gen_dist):.3f}")
    print(f"event_to_pickup_ms_p50: {med(pickups):.1f}")
    print(f"chain_overhead_ms_per_job: {med(overheads):.1f}")


if __name__ == "__main__":
    main()
