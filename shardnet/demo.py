"""`make demo`: one real job on the embedded devnet, end to end.

Brings the devnet up (Anvil + IPFS + contracts), publishes the real all-MiniLM-L6-v2 weights
to IPFS as int8 shards and records the model on-chain, registers three staked nodes that each
fetch, verify and confirm a span of blocks, posts a similarity job with escrow, routes it,
runs the three stages with int8 activations between them, has every stage sign its EIP-712
receipt, submits the result, prints the answer, the receipts and the payouts, and shuts the
devnet down. (Node agents as separate processes arrive with the node issue; here the stages
run in this process, with each stage's own key and its own verified blocks.)
"""

from __future__ import annotations

import json
import sys
import time

import torch
from eth_utils import keccak

from shardnet import devnet
from shardnet.bindings import Contracts, output_hash_of
from shardnet.chain import Chain, dev_account
from shardnet.deployment import Deployment
from shardnet.errors import ShardnetError
from shardnet.model.loading import load_model, load_tokenizer
from shardnet.model.quant import decode_activation, encode_activation
from shardnet.model.shards import fetch_manifest, fetch_span, publish
from shardnet.model.span import SpanModel, split_even
from shardnet.protocol import Hardware, Stage
from shardnet.storage import IpfsClient

QUERY = "How do I keep my plants healthy?"
CANDIDATES = [
    "Water your houseplants when the top of the soil feels dry and give them bright, indirect light.",
    "The central bank raised interest rates by a quarter point on Tuesday.",
    "Our football team won the championship after a dramatic penalty shootout.",
    "Compilers translate source code into machine instructions.",
]
GWEI = 10**9


def run() -> None:
    t0 = time.monotonic()
    info = devnet.up()
    print(f"devnet: chain {info['rpc_url']} (id {info['chain_id']}), IPFS {info['ipfs_api']}")
    deployment = Deployment.load()
    chain = Chain.from_deployment(deployment, account=dev_account(0))
    c = Contracts(chain)
    coordinator, client = dev_account(1), dev_account(12)
    nodes = [dev_account(2 + i) for i in range(3)]
    ipfs = IpfsClient(deployment.ipfs_api)

    # model owner: publish shards and record the model
    model, tok_dir = load_model("minilm")
    manifest = publish(model, ipfs, "all-MiniLM-L6-v2", quant="int8", tokenizer_dir=tok_dir)
    blocks = len(manifest.blocks)
    model_id = c.models.register_model("all-MiniLM-L6-v2", manifest.cid, blocks, manifest.blocks_root, GWEI,
                                       account=dev_account(0))
    print(f"model {model_id}: manifest {manifest.cid}, {blocks} int8 blocks "
          f"({sum(b['bytes'] for b in manifest.blocks) / 1e6:.1f} MB)")

    # operators: stake, get a span, fetch + verify it from IPFS, confirm on-chain
    spans = split_even(blocks, 3)
    fetched = fetch_manifest(ipfs, manifest.cid)
    stage_models = []
    for i, (acct, span) in enumerate(zip(nodes, spans, strict=True)):
        if not c.nodes.node(acct.address).registered_at:
            c.nodes.register(f"http://127.0.0.1:{7001 + i}", Hardware(4096, 10, 100), acct.address.encode(),
                             10**18, account=acct)
        c.models.assign_shard(model_id, acct.address, span.start, span.end, account=coordinator)
        stage_models.append(SpanModel(fetched.config, span, fetch_span(ipfs, fetched, span)))
        c.models.confirm_shard(model_id, account=acct)
        print(f"node {acct.address[:10]}… staked 1 ETH, serves blocks [{span.start}, {span.end}) — verified")

    # client: put the input on IPFS and post the job with escrow
    job_input = {"kind": "embed", "query": QUERY, "candidates": CANDIDATES}
    input_cid = ipfs.add(json.dumps(job_input).encode())
    deadline = chain.w3.eth.get_block("latest")["timestamp"] + 600
    job_id = c.market.post_job(model_id, input_cid, b'{"kind":"embed"}', 10**15, deadline, account=client)
    print(f"job {job_id} posted by {client.address[:10]}… with 0.001 ETH escrow, input {input_cid}")

    # coordinator: route the job through the three nodes
    stages = [Stage(a.address, s.start, s.end, GWEI * 1000 * len(s)) for a, s in zip(nodes, spans, strict=True)]
    c.market.route_job(job_id, stages, account=coordinator)

    # data plane: each stage runs its span; int8 activations travel between stages
    tokenizer = load_tokenizer(tok_dir)
    texts = [QUERY, *CANDIDATES]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    hashes, x, wire = [], enc["input_ids"], 0
    hashes.append(keccak(ipfs.cat(input_cid)))
    for k, stage_model in enumerate(stage_models):
        out = stage_model(x, attention_mask=enc["attention_mask"])
        if k < len(stage_models) - 1:
            payload = encode_activation(out)
            wire += len(payload)
            hashes.append(keccak(payload))
            x = decode_activation(payload)
        else:
            x = out
    scores = (x[0:1] @ x[1:].T).squeeze(0)
    result = {"query": QUERY, "ranking": [{"text": CANDIDATES[i], "score": round(float(scores[i]), 4)}
                                          for i in torch.argsort(scores, descending=True).tolist()]}
    output_cid = ipfs.add(json.dumps(result).encode())
    hashes.append(output_hash_of(output_cid))
    receipts = [c.market.sign_receipt(acct, job_id, k, s.start, s.end, hashes[k], hashes[k + 1])
                for k, (acct, s) in enumerate(zip(nodes, spans, strict=True))]
    c.market.submit_result(job_id, coordinator.address, stages, output_cid, receipts, account=nodes[-1])

    print(f"\nquery: {QUERY}")
    for row in result["ranking"]:
        print(f"  {row['score']:+.3f}  {row['text']}")
    print(f"output {output_cid}; {wire / 1e3:.1f} kB of int8 activations between stages")
    print("receipts (EIP-712, checked on-chain):")
    for k, (s, r) in enumerate(zip(stages, receipts, strict=True)):
        print(f"  stage {k} [{s.start},{s.end}) {s.node[:10]}…  in {r.input_hash.hex()[:12]}…  "
              f"out {r.output_hash.hex()[:12]}…")
    print("payouts (credited, then withdrawn):")
    for s in stages:
        credit = c.market.account(s.node).credit
        c.market.withdraw(account=dev_account_by(nodes, s.node))
        print(f"  {s.node[:10]}…  {credit / GWEI:,.0f} gwei")
    print(f"  coordinator {c.market.account(coordinator.address).credit / GWEI:,.0f} gwei, "
          f"client refund {c.market.account(client.address).credit / GWEI:,.0f} gwei")
    print(f"job {job_id}: {c.market.job(job_id).status.name.lower()} in {time.monotonic() - t0:.1f} s")


def dev_account_by(accounts, address):
    return next(a for a in accounts if a.address == address)


def main() -> int:
    try:
        run()
    except ShardnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stopped = devnet.down()
        print(f"devnet down ({', '.join(stopped) or 'nothing running'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
