"""`make demo`: the network doing its main job on the embedded devnet.

Brings the devnet up (Anvil + IPFS + contracts), starts a coordinator and four staked node
processes (the fourth started with the devnet-only `misbehave = "garbage"`, to show what
happens to a cheater), publishes two models to IPFS (the real all-MiniLM-L6-v2 weights, and a
small seeded GPT-2 over the same vocabulary), lets the coordinator assign spans and the nodes
fetch, verify and confirm them, then runs real jobs posted on-chain with escrow: a similarity
query a person can judge, a generation audited at every stage by committees of the other
nodes, a job routed through the cheater, which its committee finds wrong and slashes, and a
chat reply streamed to the official openai package through the OpenAI-compatible gateway.
Prints outputs, per-stage receipts, payouts, votes and verdicts, and shuts everything down.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import torch

from shardnet import devnet
from shardnet.chain import dev_account
from shardnet.client import Client, JobResult
from shardnet.errors import ShardnetError
from shardnet.jobs import JobParams
from shardnet.localnet import Network

QUERY = "How do I keep my plants healthy?"
CANDIDATES = [
    "Water your houseplants when the top of the soil feels dry and give them bright, indirect light.",
    "The central bank raised interest rates by a quarter point on Tuesday.",
    "Our football team won the championship after a dramatic penalty shootout.",
    "Compilers translate source code into machine instructions.",
]
MAX_FEE = 10**15  # 0.001 ETH escrow per job
NODES = 4
CHEAT = 3  # node index started with misbehave = "garbage"


def _output(result: JobResult) -> dict[str, Any]:
    if result.output is None:
        raise ShardnetError(
            f"job {result.record.job_id} ended {result.status.name.lower()}: {result.record.abort_reason}"
        )
    return result.output


def _show(result: JobResult) -> None:
    r = result.record
    for k, (node, start, end, _fee) in enumerate(r.route):
        in_hash, out_hash, _ = r.receipts[k]
        print(
            f"    stage {k} blocks [{start},{end}) node {node[:10]}…  receipt in {bytes(in_hash).hex()[:10]}… "
            f"out {bytes(out_hash).hex()[:10]}…  paid {r.payouts.get(node, 0):,} wei"
        )
    print(
        f"    coordinator paid {r.payouts.get(r.coordinator or '', 0):,} wei; client refunded {r.refunded:,} wei; "
        f"output {r.output_cid}"
    )


def _verify(net: Network, job_id: int) -> None:
    """What a verification committee member does: re-run every stage of the job from the
    transcripts on IPFS (the node package's own command, run as an operator would)."""
    command = [sys.executable, "-m", "shardnet.cli", "node", "verify", str(job_id)]
    checked = subprocess.run(
        [*command, "--deployment", str(net.deployment_path)], capture_output=True, text=True, timeout=300
    )
    print(f"\nre-running every stage of job {job_id} from its transcripts on IPFS (shardnet node verify {job_id}):")
    for line in (checked.stdout or checked.stderr).splitlines():
        print(f"  {line}")


def _show_audits(net: Network, job_id: int) -> None:
    names: dict[str, str] = {dev_account(2 + i).address: f"node {i + 1}" for i in range(NODES)}
    for a in net.resolved_audits([job_id])[1][job_id]:
        votes = ", ".join(f"{names.get(m, m[:10])} {['-', 'correct', 'wrong'][a.votes.get(m, 0)]}" for m in a.members)
        verdict = f"WRONG: {names.get(a.node)} slashed {a.slashed / 10**18:g} ETH" if a.upheld else "right"
        paid = sum(amount for _, amount, why in a.paid if why == "verification")
        print(
            f"    audit {a.audit_id}: stage {a.stage} ({names.get(a.node)}) — votes {votes} — {verdict}; "
            f"committee paid {paid:,} wei"
        )


def _audit(net: Network) -> None:
    """What an auditor does: index every event, check the books against contract state and
    every receipt's signature."""
    from shardnet.audit import index_label, reconcile, verify_receipts
    from shardnet.indexer import Index

    net.settled_ledger()  # audits are settled in the background: wait until the network is at rest
    path = net.home / "demo-index.sqlite"
    path.unlink(missing_ok=True)
    with Index(path, net.chain) as index:
        report = index.sync()
        ledger = index.state()
    diffs, problems = reconcile(net.chain, ledger, index_label), verify_receipts(net.chain, ledger)
    receipts = sum(len(j.receipts) for j in ledger.jobs.values())
    print(
        f"\nauditor: indexed {report.events} events into SQLite; books "
        f"{'match contract state' if not diffs else 'DIFFER: ' + '; '.join(map(str, diffs))}; "
        f"{receipts} receipts {'verified' if not problems else 'BAD: ' + '; '.join(problems)}"
    )
    print("  browse it: .venv/bin/shardnet devnet up && .venv/bin/shardnet explorer   (http://127.0.0.1:8090)")


def _chat(net: Network) -> None:
    """What an existing app does: the official openai package, pointed at `shardnet gateway`,
    streams a chat reply; the gateway turns it into an on-chain job paid from its own wallet."""
    import json

    import openai

    keys = net.home / "gateway-keys.json"
    keys.write_text(json.dumps({"keys": {"sk-demo": {"budget_wei": 10**17}}}))
    wallet = dev_account(13)
    url = net.start_gateway(keys, dev_account_index=13)
    print(f"\njob 4 — a streamed chat from the openai package through 'shardnet gateway' at {url}")
    api = openai.OpenAI(base_url=url, api_key="sk-demo", max_retries=0, timeout=120)
    question = "what can a network of ordinary machines do?"
    stream = api.chat.completions.create(
        model="demo-gpt2", messages=[{"role": "user", "content": question}], max_tokens=12, temperature=0, stream=True
    )
    print(f"  user: {question}\n  assistant (streamed as the last stage makes each token):", end="", flush=True)
    text, job_id = "", 0
    for chunk in stream:
        job_id = int(chunk.id.split("-")[-1])
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece:
            text += piece
            print(piece, end="", flush=True)
    result = Client.from_deployment(wallet, net.deployment).wait(job_id, timeout_s=120)
    same = _output(result)["text"] == text
    print(
        f"\n  job {job_id}, paid from the gateway's wallet {wallet.address[:10]}…; the on-chain output "
        f"{'equals' if same else 'DIFFERS FROM'} the stream"
    )


def run() -> None:
    started = time.monotonic()
    settings = devnet.DevnetSettings()
    net = Network(
        devnet.DevnetPaths.default(settings).home / "demo",
        nodes=NODES,
        devnet_settings=settings,
        node_overrides={CHEAT: {"misbehave": "garbage"}},
    )
    print("starting the devnet, a coordinator and four node processes (node 4 serves garbage, on purpose)...")
    net.start()
    cheat = dev_account(2 + CHEAT).address
    try:
        print(
            f"  chain {net.deployment.rpc_url}, IPFS {net.deployment.ipfs_api}; nodes "
            + ", ".join(f"{i + 1}: {dev_account(2 + i).address[:10]}…" for i in range(NODES))
        )
        models = {}
        for source in ("minilm", "demo-gpt2"):
            models[source], cid = net.publish(source)
            print(f"  published {source} as model {models[source]} (int8 shards, manifest {cid})")
        for model_id in models.values():
            net.wait_confirmed(model_id, NODES)
        for source, model_id in models.items():
            assignments = {n: net.c.models.assignment(model_id, n) for n in net.c.models.assigned_nodes(model_id)}
            spans = sorted((a.start, a.end, n[:10]) for n, a in assignments.items() if a.confirmed)  # seen confirmed
            print(
                f"  {source}: " + ", ".join(f"[{s},{e}) on {n}…" for s, e, n in spans) + " — fetched, verified, "
                "confirmed on-chain"
            )

        poster = dev_account(12)
        client = Client.from_deployment(poster, net.deployment)
        print(f"\njob 1 — similarity (MiniLM), posted by {poster.address[:10]}… with 0.001 ETH escrow")
        honest = (cheat,)  # the everyday jobs avoid the cheater; the last one goes through it
        result = client.wait(
            client.submit(
                models["minilm"], {"texts": [QUERY, *CANDIDATES]}, JobParams(kind="embed", avoid=honest), MAX_FEE
            ),
            timeout_s=120,
        )
        emb = torch.tensor(_output(result)["embeddings"])
        scores = (emb[0:1] @ emb[1:].T).squeeze(0)
        print(f"  query: {QUERY}")
        for i in torch.argsort(scores, descending=True).tolist():
            print(f"    {scores[i]:+.3f}  {CANDIDATES[i]}")
        _show(result)

        print(
            "\njob 2 — generation (GPT-2 shape with seeded random weights, so the words are noise; sampled "
            "with temperature 0.9, top-k 40, seed 7, reproducibly), audit_rate 1.0: every stage is re-run by a "
            "committee drawn from the other nodes, which commits, reveals and settles its votes on-chain"
        )
        prompt = "the network of ordinary machines"
        params = JobParams(
            kind="generate", max_new_tokens=12, temperature=0.9, top_k=40, seed=7, audit_rate=1.0, avoid=honest
        )
        result = client.wait(client.submit(models["demo-gpt2"], {"prompt": prompt}, params, MAX_FEE), timeout_s=120)
        print(f"  prompt: {prompt!r}\n  output: {_output(result)['text']!r}")
        _show(result)
        _show_audits(net, result.record.job_id)
        _verify(net, result.record.job_id)

        rivals = net.rivals(models["demo-gpt2"], cheat)
        stake = net.c.nodes.node(cheat).stake
        print("\njob 3 — the same generation routed through node 4, which serves garbage activations")
        params = JobParams(kind="generate", max_new_tokens=12, seed=7, audit_rate=1.0, avoid=rivals)
        result = client.wait(client.submit(models["demo-gpt2"], {"prompt": prompt}, params, MAX_FEE), timeout_s=120)
        print(f"  output: {_output(result)['text']!r}")
        _show(result)
        _show_audits(net, result.record.job_id)
        after = net.c.nodes.node(cheat).stake
        print(
            f"  node 4's stake: {stake / 10**18:g} ETH -> {after / 10**18:g} ETH; its fee went back to the client, "
            f"whose credit is now {net.c.market.credit(poster.address):,} wei"
        )
        _chat(net)
        _audit(net)
        print(f"\ndone in {time.monotonic() - started:.0f} s")
    finally:
        net.stop()
        print("network stopped (nodes, coordinator, chain, IPFS)")


def main() -> int:
    try:
        run()
    except ShardnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from shardnet.process import run_then_exit

    run_then_exit(main)
