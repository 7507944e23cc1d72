"""The network's speed against the same model in one process, measured side by side in one run.

A devnet, three node processes (one torch thread each) and a GPT-2-small-sized model
(124M parameters, seeded weights, int8 shards on IPFS) cut into three spans; then the Petals
comparison's model (`llama-512`: Llama, hidden 512, 8 layers, vocabulary 32000) on two nodes,
fp32 shards and wire, whose generated tokens must equal the in-process ones. The bench
routes jobs itself (as the coordinator account) so it knows when each JobRouted event was
emitted. Prints `name: value` lines:

- forward_latency_ratio_3_stages: data-plane time of a 128-token forward across the three
  nodes (stage 0 start to last stage done, int8 activations over the encrypted links) over the
  same forward in this process (one torch thread, whole model from the same shards). Target <= 1.10.
- generation_tokps_ratio: tokens/s of a 32-token greedy generation across the nodes (KV cache
  at every stage, the token loop going round the route) over in-process with KV cache. Both
  compute the logits of the last position only, the prompt's included (as the nodes' last stage
  does, and transformers' `generate`). Target >= 0.9.
- hop_overhead_ms_p50: what one hop between stages costs beyond compute, measured by the nodes
  in the generations: from the end of one stage's model call to the start of the next stage's
  (the job output's `timing`: `hop_ms` over `hops`). That is the whole trip of a message: the
  sender's per-step work outside the model (sampling, encoding, sealing, framing), the socket,
  and the receiver's (parsing, opening, checking, queueing, decoding). A 32-token generation
  over three stages makes 3 x 32 - 1 hops (prompt 0->1->2, then each token 2->0->1->2 but the
  last). The median over both models' generations of each one's mean hop. Target <= 1.0.
- hop_overhead_ms_p50_from_totals: (data-plane time - in-process time) / hops, the same hops
  inferred from the totals instead. It also counts what the spans' compute loses in processes
  of their own (each one's caches are cold when its turn comes: the process floor below shows
  that part), and the in-process run's noise divided among the hops.
- forward_latency_ratio_llama512 (target <= 1.3) and generation_tokps_ratio_llama512 (>= 0.8):
  the same two figures for `llama-512` on two nodes, a 128-token forward and a 64-token
  generation after a 128-token prompt.
- batched_tokps_ratio_8_jobs: `llama-512` on its two nodes, 8 generations (64 new tokens after
  a 128-token prompt, fp32) posted and routed at once: their aggregate tokens/s (every token
  over the time from the first stage 0 start to the last output) over one generation's alone.
  The nodes batch the decode steps that wait on the same span. The median of 5 runs. Target >= 3.
- generation_tokps_ratio_process_floor (and _llama512_process_floor): the same generations with
  the same spans in plain processes of their own (one torch thread each), passing activations
  and tokens round by OS pipes: no network, encryption, chain or node, only the cost of cutting
  the model across processes on this machine (each stage's caches are cold when its turn comes).
  No target: it says how much of the gap to in-process is the machine's. Likewise
  hop_overhead_ms_p50_process_floor: the floor's hops measured the same way (a pipe between
  plain processes: the least a hop costs here), hop_overhead_ms_p50_from_totals_process_floor:
  the totals' formula on the floor's generations, and hop_overhead_ms_p50_gpt2 / _llama512:
  each model's own figures.
- event_to_pickup_ms_p50: routeJob sent (then mined: Anvil automines) to stage 0 acting on its
  JobRouted event. Target <= 50.
- chain_overhead_ms_per_job: client-observed job time minus its data-plane time (post,
  routing, the input's IPFS read, receipts, result transaction, the result's notice, the
  output's read from the last stage).
"""

from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from dataclasses import replace
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch

from shardnet.bindings.market import route_gas_limit
from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.model.manifest import fetch_manifest
from shardnet.model.shards import fetch_span
from shardnet.model.span import SpanModel, split_even
from shardnet.protocol import Span, Stage
from shardnet.storage import IpfsClient

MODEL = "gpt2-small"
ANCHOR = "llama-512"  # the Petals comparison's model, on two nodes, fp32, 128-token prompt, 64 new tokens
ANCHOR_PROMPT, ANCHOR_NEW_TOKENS = 128, 64
FORWARD_TOKENS = 128
PROMPT_TOKENS = 16
NEW_TOKENS = 32
RUNS = 9  # runs per figure (after a warm-up): the median of 9 holds against the odd slow run
BATCHED_RUNS = 5  # the 8 concurrent generations, measured this many times (the median counts)
MAX_FEE = 10**16


def route_now(net: Network, job_id: int, stages: list[Stage]) -> float:
    """Send routeJob as the coordinator does (Chain.transact with the binding's gas bound);
    returns the wall time at which it was sent, signed: no later than it was mined (Anvil
    automine answers with the receipt), so the pickup figure also holds the chain's mining."""
    chain, coordinator = net.chain, dev_account(1)
    fn = net.c.market.contract.functions.routeJob(job_id, [tuple(s) for s in stages])
    raw = chain.sign_bounded(fn, coordinator, route_gas_limit(len(stages)))
    sent_at = time.time()
    chain.send_raw(raw)
    return sent_at


def run_job(net, client, model_id, stages, job_input, params):
    started = time.time()
    job_id = client.submit(model_id, job_input, params, MAX_FEE)
    routed_at = route_now(net, job_id, stages)
    result = client.wait(job_id, timeout_s=300, poll_s=0.05)
    total_ms = (time.time() - started) * 1000
    timing = result.output["timing"]
    return result, total_ms, timing["data_plane_ms"], (timing["picked_up_at"] - routed_at) * 1000


def concurrent(net, client, model_id, stages, vocab, prompt_tokens, new_tokens, wire, run, jobs=8):
    """`jobs` generations posted, then routed, at once: aggregate tokens/s over their span of time."""
    params = JobParams(kind="generate", max_new_tokens=new_tokens, wire=wire)
    prompts = [
        torch.randint(
            0, vocab, (prompt_tokens,), generator=torch.Generator().manual_seed(500 + jobs * run + i)
        ).tolist()
        for i in range(jobs)
    ]
    ids = [client.submit(model_id, {"input_ids": p}, params, MAX_FEE) for p in prompts]
    for job_id in ids:
        route_now(net, job_id, stages)
    results = [client.wait(job_id, timeout_s=600, poll_s=0.05) for job_id in ids]
    starts = [r.output["timing"]["t0"] for r in results]
    ends = [r.output["timing"]["t0"] + r.output["timing"]["data_plane_ms"] / 1000 for r in results]
    tokens = sum(len(r.output["tokens"]) for r in results)
    return tokens / (max(ends) - min(starts))


def _floor_stage(
    ipfs_api: str,
    manifest_cid: str,
    span: Span,
    inbox: list[Connection],
    outbox: Connection,
    ready: Connection,
    last: bool,
    new_tokens: int,
) -> None:
    """One stage of the process floor: a span in a plain process, fed by pipes. Stage 0 waits on
    the bench's pipe (a prompt) and the last stage's (a token); the last stage picks each token,
    sends it round to stage 0, and the generation's tokens to the bench at the end. Like the
    nodes, each message carries when its sender's model call ended and the hops counted so far
    (their number and seconds: to the start of the receiver's model call)."""
    torch.set_num_threads(1)
    ipfs = IpfsClient(ipfs_api)
    manifest = fetch_manifest(ipfs, manifest_cid)
    model = SpanModel(manifest.new_config(), span, fetch_span(ipfs, manifest, span))
    ready.send(True)
    session, tokens = model.new_session(), []
    while True:
        for conn in wait(inbox):
            kind, x, sent, hops, hop_s = conn.recv()
            if kind == "stop":
                return
            if kind == "prompt":
                session, tokens = model.new_session(), []
            began = time.time()
            out = model(torch.from_numpy(x), session=session, last_only=last)
            ended = time.time()
            if sent is not None:
                hops, hop_s = hops + 1, hop_s + began - sent
            if not last:
                outbox.send((kind, out.numpy(), ended, hops, hop_s))
                continue
            tokens.append(int(out[0, -1].argmax()))
            if len(tokens) < new_tokens:
                outbox.send(("token", torch.tensor([[tokens[-1]]]).numpy(), ended, hops, hop_s))
            else:
                ready.send((tokens, hops, hop_s))


class ProcessFloor:
    """The model's spans in plain processes joined by pipes, for generations run side by side
    with the nodes' and the in-process ones."""

    def __init__(self, net, manifest_cid, spans, new_tokens):
        context = multiprocessing.get_context("spawn")
        n = len(spans)
        links = [context.Pipe(duplex=False) for _ in range(n)]  # links[k]: into stage k (0: from the last)
        feed_out, self.feed = context.Pipe(duplex=False)  # the bench -> stage 0
        reports = [context.Pipe(duplex=False) for _ in range(n)]
        self.stops = [self.feed] + [links[k][1] for k in range(1, n)]
        self.stages = []
        for k, span in enumerate(spans):
            inbox = [links[k][0]] + ([feed_out] if k == 0 else [])
            outbox = links[(k + 1) % n][1]
            args = (net.deployment.ipfs_api, manifest_cid, span, inbox, outbox, reports[k][1], k == n - 1, new_tokens)
            self.stages.append(context.Process(target=_floor_stage, args=args, daemon=True))
            self.stages[-1].start()
        for receive, _ in reports:
            receive.recv()  # loaded
        self.result = reports[-1][0]

    def generate(self, prompt):
        """-> (ms, tokens, (hops, their mean ms)) of one generation after `prompt`."""
        started = time.perf_counter()
        self.feed.send(("prompt", prompt.numpy(), None, 0, 0.0))
        tokens, hops, hop_s = self.result.recv()
        return (time.perf_counter() - started) * 1000, tokens, (hops, hop_s * 1000 / max(1, hops))

    def close(self):
        for conn in self.stops:
            conn.send(("stop", None, None, 0, 0.0))
        for stage in self.stages:
            stage.join(timeout=30)


def measure(net, client, source, quant, wire, node_count, forward_tokens, prompt_tokens, new_tokens, batched=False):
    """One model on `node_count` nodes, spans split evenly, against the same model in this
    process; returns the figures (ms lists and counts), checking fp32 runs give identical tokens."""
    model_id, manifest_cid = net.publish(source, quant=quant, price_per_block=10**9)
    manifest = fetch_manifest(net.ipfs, manifest_cid)
    blocks = len(manifest.blocks)
    nodes = [dev_account(2 + i).address for i in range(node_count)]
    spans = split_even(blocks, node_count)
    for node, span in zip(nodes, spans, strict=True):
        net.c.models.assign_shard(model_id, node, span.start, span.end, account=dev_account(1))
    net.wait_confirmed(model_id, node_count, timeout_s=600)
    stages = [Stage(n, s.start, s.end, 10**9 * len(s)) for n, s in zip(nodes, spans, strict=True)]

    # in-process baseline: the whole model from the same shards, one torch thread
    torch.set_num_threads(1)
    whole = SpanModel(manifest.new_config(), Span(0, blocks), fetch_span(net.ipfs, manifest, Span(0, blocks)))
    vocab = manifest.config.vocab_size
    f = {
        "fwd_local": [],
        "fwd_dist": [],
        "pickups": [],
        "overheads": [],
        "gen_local": [],
        "gen_dist": [],
        "hops": [],
        "total_hops": [],
        "pipe_hops": [],
        "gen_floor": [],
        "floor_hops": [],
    }
    f["params_m"] = sum(p.numel() for p in whole.parameters()) / 1e6
    f["spans"] = [(s.start, s.end) for s in spans]
    for i in range(RUNS + 1):
        ids = torch.randint(0, vocab, (1, forward_tokens), generator=torch.Generator().manual_seed(i))
        t = time.perf_counter()
        whole(ids)
        local_ms = (time.perf_counter() - t) * 1000
        params = JobParams(kind="forward", wire=wire)
        _, total, dp, pickup = run_job(net, client, model_id, stages, {"input_ids": ids[0].tolist()}, params)
        if i:  # the first run warms caches on every side
            f["fwd_local"].append(local_ms)
            f["fwd_dist"].append(dp)
            f["pickups"].append(pickup)
            f["overheads"].append(total - dp)
    floor = ProcessFloor(net, manifest_cid, spans, new_tokens)
    for i in range(RUNS + 1):
        prompt = torch.randint(0, vocab, (1, prompt_tokens), generator=torch.Generator().manual_seed(100 + i))
        t = time.perf_counter()
        session, x, local_tokens = whole.new_session(), prompt, []
        for _ in range(new_tokens):
            x = whole(x, session=session, last_only=True)[:, -1:].argmax(-1)
            local_tokens.append(int(x))
        local_ms = (time.perf_counter() - t) * 1000
        params = JobParams(kind="generate", max_new_tokens=new_tokens, wire=wire)
        result, total, dp, pickup = run_job(net, client, model_id, stages, {"input_ids": prompt[0].tolist()}, params)
        assert len(result.output["tokens"]) == new_tokens
        if wire == "fp32":
            assert result.output["tokens"] == local_tokens, "fp32 across nodes must give the in-process tokens"
        floor_ms, floor_tokens, (floor_hop_count, floor_hop_ms) = floor.generate(prompt)
        assert floor_tokens == local_tokens, "the process floor must give the in-process tokens"
        if i:
            f["gen_floor"].append(floor_ms)
            f["gen_local"].append(local_ms)
            f["gen_dist"].append(dp)
            hops = node_count * new_tokens - 1
            timing = result.output["timing"]
            assert timing["hops"] == hops, f"the nodes counted {timing['hops']} hops, not {hops}"
            assert floor_hop_count == hops, f"the process floor counted {floor_hop_count} hops, not {hops}"
            f["hops"].append(timing["hop_ms"] / hops)
            f["pipe_hops"].append(floor_hop_ms)
            f["total_hops"].append((dp - local_ms) / hops)
            f["floor_hops"].append((floor_ms - local_ms) / hops)
            f["pickups"].append(pickup)
            f["overheads"].append(total - dp)
    floor.close()
    if batched:
        alone = new_tokens / (statistics.median(f["gen_dist"]) / 1000)
        aggregate = [
            concurrent(net, client, model_id, stages, vocab, prompt_tokens, new_tokens, wire, run)
            for run in range(BATCHED_RUNS)
        ]
        f["batched_ratio"] = statistics.median(aggregate) / alone
        f["batched_tokps"] = (statistics.median(aggregate), alone)
    return f


def main() -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as home:
        net = Network(Path(home), coordinator=False, ipfs_timeout_s=60).start()
        try:
            # no audits drawn by chance: a committee re-running a stage in the background would
            # share the CPU with the next job measured (auditing has its own bench)
            net.c.market.set_terms(replace(net.c.market.terms(), min_audit_bps=0))
            client = Client.from_deployment(dev_account(12), net.deployment)
            gpt2 = measure(net, client, MODEL, "int8", "int8", 3, FORWARD_TOKENS, PROMPT_TOKENS, NEW_TOKENS)
            llama = measure(
                net, client, ANCHOR, "none", "fp32", 2, ANCHOR_PROMPT, ANCHOR_PROMPT, ANCHOR_NEW_TOKENS, batched=True
            )
        finally:
            net.stop()

    med = statistics.median
    print(f"model: {MODEL} ({gpt2['params_m']:.0f}M parameters, int8 shards and wire, spans {gpt2['spans']})")
    print(f"forward_ms_in_process_128_tokens: {med(gpt2['fwd_local']):.1f}")
    print(f"forward_ms_3_stages_128_tokens: {med(gpt2['fwd_dist']):.1f}")
    print(f"forward_latency_ratio_3_stages: {med(gpt2['fwd_dist']) / med(gpt2['fwd_local']):.3f}")
    print(f"generation_tokps_in_process: {NEW_TOKENS / (med(gpt2['gen_local']) / 1000):.1f}")
    print(f"generation_tokps_3_stages: {NEW_TOKENS / (med(gpt2['gen_dist']) / 1000):.1f}")
    print(f"generation_tokps_ratio: {med(gpt2['gen_local']) / med(gpt2['gen_dist']):.3f}")
    print(f"generation_tokps_ratio_process_floor: {med(gpt2['gen_local']) / med(gpt2['gen_floor']):.3f}")
    print(f"model: {ANCHOR} ({llama['params_m']:.0f}M parameters, fp32 shards and wire, spans {llama['spans']})")
    print(f"forward_ms_in_process_llama512: {med(llama['fwd_local']):.1f}")
    print(f"forward_ms_2_stages_llama512: {med(llama['fwd_dist']):.1f}")
    print(f"forward_latency_ratio_llama512: {med(llama['fwd_dist']) / med(llama['fwd_local']):.3f}")
    print(f"generation_tokps_in_process_llama512: {ANCHOR_NEW_TOKENS / (med(llama['gen_local']) / 1000):.1f}")
    print(f"generation_tokps_2_stages_llama512: {ANCHOR_NEW_TOKENS / (med(llama['gen_dist']) / 1000):.1f}")
    print(f"generation_tokps_ratio_llama512: {med(llama['gen_local']) / med(llama['gen_dist']):.3f}")
    print(f"generation_tokps_ratio_llama512_process_floor: {med(llama['gen_local']) / med(llama['gen_floor']):.3f}")
    together, alone = llama["batched_tokps"]
    print(f"batched_tokps_8_jobs: {together:.1f} (one generation alone: {alone:.1f})")
    print(f"batched_tokps_ratio_8_jobs: {llama['batched_ratio']:.2f}")
    print(f"hop_overhead_ms_p50: {med(gpt2['hops'] + llama['hops']):.2f}")
    print(f"hop_overhead_ms_p50_process_floor: {med(gpt2['pipe_hops'] + llama['pipe_hops']):.2f}")
    print(f"hop_overhead_ms_p50_from_totals: {med(gpt2['total_hops'] + llama['total_hops']):.2f}")
    print(f"hop_overhead_ms_p50_from_totals_process_floor: {med(gpt2['floor_hops'] + llama['floor_hops']):.2f}")
    for name, f in (("gpt2", gpt2), ("llama512", llama)):
        print(
            f"hop_overhead_ms_p50_{name}: {med(f['hops']):.2f} (process floor {med(f['pipe_hops']):.2f}; "
            f"from the totals {med(f['total_hops']):.2f}, process floor {med(f['floor_hops']):.2f})"
        )
    print(f"event_to_pickup_ms_p50: {med(gpt2['pickups'] + llama['pickups']):.1f}")
    print(f"chain_overhead_ms_per_job: {med(gpt2['overheads'] + llama['overheads']):.1f}")


if __name__ == "__main__":
    main()
