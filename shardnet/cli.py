"""`shardnet` command line. Errors print one line naming the fix; no tracebacks."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from shardnet.errors import ShardnetError


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except ShardnetError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
def main() -> None:
    """shardnet: run large models across many machines, coordinated on-chain."""


# ---------------------------------------------------------------------- devnet
def _devnet_settings(home, chain_port, ipfs_port):
    from shardnet.devnet import DevnetSettings

    overrides = {k: v for k, v in {"home": home, "chain_port": chain_port, "ipfs_port": ipfs_port}.items()
                 if v is not None}
    return DevnetSettings(**overrides)


_home = click.option("--home", type=click.Path(path_type=Path), help="devnet folder (default <repo>/.devnet)")
_chain_port = click.option("--chain-port", type=int, help="Anvil port (default 8545)")
_ipfs_port = click.option("--ipfs-port", type=int, help="IPFS RPC API port (default 5001)")
_as_json = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")


def _print_status(info: dict, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(f"chain         {info['rpc_url']}  (ws {info['ws_url']})  chain id {info['chain_id']}, "
               f"block {info['block_number']}")
    click.echo(f"ipfs          {info['ipfs_api']}  peer {info['ipfs_peer_id']}")
    for name, address in info["contracts"].items():
        click.echo(f"{name:<14}{address}")
    click.echo(f"deployment    {info['deployment_file']}  (from block {info['deploy_block']})")
    procs = ", ".join(f"{k} pid {v}" for k, v in info["processes"].items()) or "none recorded"
    click.echo(f"processes     {procs}")


@main.group()
def devnet() -> None:
    """Local network: Anvil chain + IPFS daemon + deployed contracts."""


@devnet.command("up")
@_home
@_chain_port
@_ipfs_port
@_as_json
def devnet_up(home, chain_port, ipfs_port, as_json) -> None:
    """Start the chain and IPFS (if not running), deploy contracts (if needed)."""
    from shardnet import devnet as dn

    started = time.monotonic()
    info = dn.up(_devnet_settings(home, chain_port, ipfs_port))
    if not as_json:
        what = ", ".join(info["started"]) or "nothing (already running)"
        click.echo(f"started {what}; contracts {'deployed' if info['deployed'] else 'already deployed'} "
                   f"in {time.monotonic() - started:.1f} s")
    _print_status(info, as_json)


@devnet.command("status")
@_home
@_as_json
def devnet_status(home, as_json) -> None:
    """Chain id, block number, contract addresses, IPFS peer id."""
    from shardnet import devnet as dn

    _print_status(dn.status(_devnet_settings(home, None, None)), as_json)


@devnet.command("down")
@_home
def devnet_down(home) -> None:
    """Stop the processes 'devnet up' started (state is kept for the next 'up')."""
    from shardnet import devnet as dn

    stopped = dn.down(_devnet_settings(home, None, None))
    click.echo(f"stopped {', '.join(stopped) if stopped else 'nothing (no devnet process was running)'}")


# ---------------------------------------------------------------------- contracts
@main.group()
def contracts() -> None:
    """Solidity contracts."""


@contracts.command("compile")
@click.option("--force", is_flag=True, help="recompile even if sources did not change")
def contracts_compile(force) -> None:
    """Compile contracts/ (cached by source hash) into build/contracts/."""
    from shardnet import compiler

    for name, artifact in compiler.compile_contracts(force=force).items():
        click.echo(f"{name:<14} {len(artifact.bytecode) // 2 - 1:>6} bytes  {artifact.compiler}")


# ---------------------------------------------------------------------- models
@main.group()
def model() -> None:
    """Models: publish shards to IPFS, inspect manifests."""


def _ipfs_api(ipfs_api: str | None) -> str:
    if ipfs_api:
        return ipfs_api
    from shardnet.deployment import Deployment

    return Deployment.load().ipfs_api


@model.command("publish")
@click.argument("source")
@click.option("--quant", type=click.Choice(["none", "fp16", "int8", "int8-mixed"]), default="int8", show_default=True,
              help="weights at rest: blockwise int8, int8 with fp16 outlier columns, or unquantised")
@click.option("--block-size", type=int, default=64, show_default=True, help="values per quantization block")
@click.option("--seed", type=int, default=0, show_default=True, help="weight seed for preset configs")
@click.option("--name", help="model name (default: SOURCE)")
@click.option("--ipfs-api", help="Kubo RPC API URL (default: from the deployment file)")
@click.option("--register/--no-register", default=False,
              help="also record the model in ModelRegistry (owner: --key-index dev account on the devnet)")
@click.option("--price-per-block", type=int, default=10**9, show_default=True, help="wei per block per job")
@click.option("--key-index", type=int, default=0, show_default=True, help="devnet account that owns the model")
def model_publish(source, quant, block_size, seed, name, ipfs_api, register, price_per_block, key_index) -> None:
    """Cut SOURCE (a preset, 'minilm', or a transformers model directory) into blocks on IPFS."""
    from shardnet.model.architectures import PRESETS
    from shardnet.model.loading import load_model
    from shardnet.model.shards import publish
    from shardnet.storage import IpfsClient

    if block_size < 1:
        raise click.BadParameter("must be >= 1", param_hint="--block-size")
    try:
        loaded, tokenizer_dir = load_model(source, seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SOURCE") from None
    with IpfsClient(_ipfs_api(ipfs_api)) as ipfs:
        manifest = publish(loaded, ipfs, name or source, quant, block_size, tokenizer_dir=tokenizer_dir,
                           progress=True)
    total = sum(b["bytes"] for b in manifest.blocks)
    click.echo(f"manifest  {manifest.cid}")
    click.echo(f"blocks    {len(manifest.blocks)} ({total / 1e6:.2f} MB, {quant}, block size {block_size})")
    if source in PRESETS:
        click.echo(f"seed      {seed}")
    if register:
        from shardnet.bindings import ModelRegistry
        from shardnet.chain import Chain, dev_account

        chain = Chain.from_deployment(account=dev_account(key_index))
        model_id = ModelRegistry(chain).register_model(name or source, manifest.cid, len(manifest.blocks),
                                                       manifest.blocks_root, price_per_block)
        click.echo(f"model id  {model_id}")


@model.command("inspect")
@click.argument("model_ref")
@click.option("--ipfs-api", help="Kubo RPC API URL (default: from the deployment file)")
@_as_json
def model_inspect(model_ref, ipfs_api, as_json) -> None:
    """Show a model's manifest: MODEL_REF is a manifest CID or an on-chain model id."""
    from shardnet.model.shards import fetch_manifest
    from shardnet.storage import IpfsClient

    cid = model_ref
    if model_ref.isdigit():
        from shardnet.bindings import ModelRegistry
        from shardnet.chain import Chain

        cid = ModelRegistry(Chain.from_deployment()).model(int(model_ref)).manifest_cid
    with IpfsClient(_ipfs_api(ipfs_api)) as ipfs:
        manifest = fetch_manifest(ipfs, cid)
    if as_json:
        click.echo(json.dumps(manifest.data, indent=2))
        return
    d = manifest.data
    click.echo(f"{d['name']}  ({d['model_type']}, {len(d['blocks'])} blocks, {d['quantization']['mode']})")
    click.echo(f"manifest     {cid}")
    click.echo(f"blocks_root  {d['blocks_root']}")
    click.echo(f"tokenizer    {', '.join(d['tokenizer']) or 'none'}")
    for b in d["blocks"]:
        click.echo(f"  block {b['index']:>3}  {b['cid']}  {b['bytes']:>10} B  sha256 {b['sha256'][:16]}...")


# ---------------------------------------------------------------------- node, coordinator
@main.group()
def node() -> None:
    """Node agent (operators)."""


@node.command("run")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, help="node.toml")
def node_run(config_path) -> None:
    """Register (staking if needed), serve assigned spans, run jobs, get paid."""
    from node import logs
    from node.agent import run_node
    from node.settings import NodeSettings

    settings = NodeSettings.load(config_path)
    logs.setup(f"node:{settings.listen_port}")
    from shardnet.process import run_until_signal

    run_until_signal(run_node(settings))


@main.group()
def coordinator() -> None:
    """Coordinator daemon."""


@coordinator.command("run")
@click.option("--dev-account", type=int, default=1, show_default=True, help="devnet account index of the coordinator")
@click.option("--key", help="0x private key (instead of --dev-account)")
@click.option("--deployment", "deployment_path", type=click.Path(path_type=Path), help="deployment file")
def coordinator_run(dev_account, key, deployment_path) -> None:
    """Assign spans for new models and route posted jobs, from chain events."""
    from eth_account import Account

    from coordinator.daemon import Coordinator
    from node import logs
    from shardnet.chain import dev_account as dev
    from shardnet.deployment import Deployment

    logs.setup("coordinator")
    account = Account.from_key(key) if key else dev(dev_account)
    from shardnet.process import run_until_signal

    run_until_signal(Coordinator(Deployment.load(deployment_path), account).run())


# ---------------------------------------------------------------------- jobs (clients)
def _wei(text: str) -> int:
    text = text.strip().lower()
    for unit, factor in (("eth", 10**18), ("gwei", 10**9), ("wei", 1)):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


@main.group()
def job() -> None:
    """Jobs (clients)."""


@job.command("submit")
@click.option("--model", "model_id", type=int, required=True, help="on-chain model id")
@click.option("--kind", type=click.Choice(["generate", "embed", "forward"]), default="generate", show_default=True)
@click.option("--prompt", help="generate: the prompt; forward: the text")
@click.option("--text", "texts", multiple=True, help="embed: a text to embed (repeat for several)")
@click.option("--input-ids", help="generate/forward: token ids instead of text, e.g. 1,2,3")
@click.option("--max-new-tokens", type=int, default=16, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-fee", default="0.001eth", show_default=True, help="escrow: wei, or with a unit (gwei, eth)")
@click.option("--ttl", type=int, default=600, show_default=True, help="seconds until the job may be expired")
@click.option("--dev-account", type=int, default=12, show_default=True, help="devnet account that pays")
@click.option("--key", help="0x private key (instead of --dev-account)")
@click.option("--no-wait", is_flag=True, help="print the job id and return")
@_as_json
def job_submit(model_id, kind, prompt, texts, input_ids, max_new_tokens, temperature, top_k, top_p, seed, max_fee, ttl,
               dev_account, key, no_wait, as_json) -> None:
    """Post a job with escrow, wait for it, print output, receipts and payouts."""
    from eth_account import Account

    from shardnet.chain import dev_account as dev
    from shardnet.client import Client
    from shardnet.jobs import JobInputError, JobParams

    params = JobParams(kind=kind, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, seed=seed)
    try:
        params.validate()
    except JobInputError as exc:
        raise click.BadParameter(str(exc)) from None
    if kind == "embed":
        if not texts:
            raise click.BadParameter("embed jobs need at least one --text", param_hint="--text")
        job_input = {"texts": list(texts)}
    elif input_ids:
        try:
            job_input = {"input_ids": [int(i) for i in input_ids.split(",")]}
        except ValueError:
            raise click.BadParameter("use comma-separated integers, e.g. 1,2,3", param_hint="--input-ids") from None
    elif not prompt:
        raise click.BadParameter(f"{kind} jobs need --prompt or --input-ids", param_hint="--prompt")
    else:
        job_input = {"prompt": prompt} if kind == "generate" else {"text": prompt}
    client = Client.from_deployment(Account.from_key(key) if key else dev(dev_account))
    job_id = client.submit(model_id, job_input, params, _wei(max_fee), ttl)
    if no_wait:
        click.echo(job_id)
        return
    click.echo(f"job {job_id} posted; waiting...", err=True)
    _print_job(client.wait(job_id, timeout_s=ttl + 30), as_json)


@job.command("status")
@click.argument("job_id", type=int)
@_as_json
def job_status(job_id, as_json) -> None:
    """A job's status, route, receipts, payouts (and the abort reason, if any)."""
    import json as _json

    from shardnet.client import Client, JobResult, SETTLED

    client = Client.from_deployment()
    record = client.history(job_id)
    output = None
    if record.output_cid and record.status in SETTLED:
        output = _json.loads(client.ipfs.cat(record.output_cid))
    _print_job(JobResult(record, output), as_json)


def _print_job(result, as_json: bool) -> None:
    r = result.record
    if as_json:
        click.echo(json.dumps({
            "job_id": r.job_id, "status": r.status.name.lower(), "model_id": r.model_id, "client": r.client,
            "input_cid": r.input_cid, "max_fee": r.max_fee, "route": [list(s) for s in r.route],
            "coordinator": r.coordinator, "output_cid": r.output_cid, "output": result.output,
            "receipts": [["0x" + bytes(x).hex() for x in rc] for rc in r.receipts],
            "payouts": r.payouts, "refunded": r.refunded, "abort_reason": r.abort_reason,
            "failed_nodes": r.failed_nodes}, indent=2, default=str))
        return
    click.echo(f"job {r.job_id}: {r.status.name.lower()}  (model {r.model_id}, escrow {r.max_fee} wei)")
    if r.abort_reason:
        click.echo(f"reason: {r.abort_reason}")
    out = result.output or {}
    if out.get("kind") == "generate":
        click.echo(f"output: {out.get('text')!r}" if out.get("text") is not None else f"tokens: {out['tokens']}")
    elif out.get("kind") == "embed":
        click.echo(f"output: {len(out['embeddings'])} embeddings of dimension {len(out['embeddings'][0])}")
    elif out:
        click.echo(f"output: tensor of shape {out['shape']}")
    if r.output_cid:
        click.echo(f"output cid: {r.output_cid}")
    for k, (node, start, end, fee) in enumerate(r.route):
        receipt = r.receipts[k] if k < len(r.receipts) else None
        sig = f"  receipt in {bytes(receipt[0]).hex()[:10]}… out {bytes(receipt[1]).hex()[:10]}…" if receipt else ""
        click.echo(f"  stage {k} [{start},{end}) {node}  fee {fee} wei{sig}")
    for payee, amount in r.payouts.items():
        click.echo(f"  paid {payee}: {amount} wei")
    if r.refunded:
        click.echo(f"  refunded to client: {r.refunded} wei")


# ---------------------------------------------------------------------- audit (auditors)
@main.group()
def audit() -> None:
    """Audits from public chain data (any RPC URL + the deployment file)."""


def _audit_chain(rpc_url):
    from shardnet.chain import Chain
    from shardnet.deployment import Deployment

    return Chain.from_deployment(Deployment.load(), rpc_url=rpc_url)


_rpc = click.option("--rpc-url", help="JSON-RPC endpoint (default: from the deployment file)")


@audit.command("jobs")
@_rpc
@click.option("--model", "model_id", type=int, help="only jobs on this model")
@click.option("--client", help="only jobs posted by this address")
@click.option("--node", help="only jobs routed through this node")
@click.option("--status", type=click.Choice(["posted", "routed", "completed", "expired", "cancelled", "aborted"]))
@_as_json
def audit_jobs(rpc_url, model_id, client, node, status, as_json) -> None:
    """Every job, rebuilt from events."""
    from shardnet.audit import build_ledger

    rows = []
    for r in build_ledger(_audit_chain(rpc_url)).jobs.values():
        if (model_id is not None and r.model_id != model_id) or (client and r.client.lower() != client.lower()):
            continue
        if node and all(s[0].lower() != node.lower() for s in r.route):
            continue
        if status and r.status.name.lower() != status:
            continue
        rows.append({"job": r.job_id, "status": r.status.name.lower(), "model": r.model_id, "client": r.client,
                     "stages": len(r.route), "paid": sum(r.payouts.values()), "refunded": r.refunded})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'job':>5} {'status':<10} {'model':>5} {'client':<42} {'stages':>6} {'paid wei':>14} {'refunded':>18}")
    for row in rows:
        click.echo(f"{row['job']:>5} {row['status']:<10} {row['model']:>5} {row['client']:<42} {row['stages']:>6} "
                   f"{row['paid']:>14} {row['refunded']:>18}")


@audit.command("node")
@click.argument("address")
@_rpc
@_as_json
def audit_node(address, rpc_url, as_json) -> None:
    """A node's stake, spans, jobs, earnings and failures, from events."""
    from web3 import Web3

    from shardnet.audit import build_ledger

    if not Web3.is_address(address):
        raise click.BadParameter("not an address; use 0x followed by 40 hex digits", param_hint="ADDRESS")
    address = Web3.to_checksum_address(address)
    ledger = build_ledger(_audit_chain(rpc_url))
    node, acct = ledger.nodes.get(address), ledger.accounts.get(address)
    if node is None:
        raise click.ClickException(f"{address} never registered as a node on this deployment")
    jobs = [j.job_id for j in ledger.jobs.values() if any(s[0] == address for s in j.route)]
    earned = sum(j.payouts.get(address, 0) for j in ledger.jobs.values())
    spans = {m: v[:2] + [bool(v[2])] for m, nodes in ledger.assignments.items() for n, v in nodes.items()
             if n == address}
    info = {"node": address, "endpoint": ledger.endpoints.get(address), "stake": node.stake,
            "pending_unstake": node.pending_unstake, "slashed": node.slashed, "spans": spans, "jobs": jobs,
            "earned": earned, "withdrawn": acct.withdrawn if acct else 0, "jobs_done": acct.jobs_done if acct else 0,
            "jobs_failed": acct.jobs_failed if acct else 0}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        click.echo(f"{key:<16}{value}")


@audit.command("reconcile")
@_rpc
def audit_reconcile(rpc_url) -> None:
    """Rebuild every balance from events and compare with contract state (non-zero exit on any difference)."""
    from shardnet.audit import build_ledger, reconcile

    chain = _audit_chain(rpc_url)
    ledger = build_ledger(chain)
    diffs = reconcile(chain, ledger)
    for diff in diffs:
        click.echo(f"MISMATCH {diff}")
    if diffs:
        sys.exit(2)
    click.echo(f"ok: {len(ledger.jobs)} jobs, {len(ledger.accounts)} accounts, {len(ledger.nodes)} nodes match "
               "contract state")


@audit.command("verify-receipts")
@_rpc
def audit_verify_receipts(rpc_url) -> None:
    """Re-check every receipt's EIP-712 signature and hash chain."""
    from shardnet.audit import build_ledger, verify_receipts

    chain = _audit_chain(rpc_url)
    ledger = build_ledger(chain)
    problems = verify_receipts(chain, ledger)
    for problem in problems:
        click.echo(f"BAD {problem}")
    if problems:
        sys.exit(2)
    checked = sum(len(j.receipts) for j in ledger.jobs.values())
    click.echo(f"ok: {checked} receipts on {sum(1 for j in ledger.jobs.values() if j.receipts)} jobs verified")


if __name__ == "__main__":
    main()
