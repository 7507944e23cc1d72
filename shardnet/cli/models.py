"""Model owners: publish shards to IPFS, inspect manifests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from shardnet.cli.root import _as_json, main
from shardnet.keys import key_options, load_account

if TYPE_CHECKING:
    from shardnet.model.check import CheckResult


# ---------------------------------------------------------------------- models
@main.group()
def model() -> None:
    """Models: publish shards to IPFS, inspect manifests."""


def _ipfs_api(ipfs_api: str | None) -> str:
    if ipfs_api:
        return ipfs_api
    from shardnet.deployment import Deployment

    return Deployment.load().ipfs_api


@model.command("list")
@_as_json
def model_list(as_json: bool) -> None:
    """Models registered on-chain: id, name, blocks, price per block, confirmed spans per block."""
    from shardnet.bindings import Contracts
    from shardnet.chain import Chain
    from shardnet.deployment import Deployment

    contracts = Contracts(Chain.from_deployment(Deployment.load()))
    rows = []
    for model_id in range(1, contracts.models.model_count() + 1):
        m = contracts.models.model(model_id)
        assigned = [contracts.models.assignment(model_id, n) for n in contracts.models.assigned_nodes(model_id)]
        cover = [sum(a.confirmed and a.start <= b < a.end for a in assigned) for b in range(m.block_count)]
        rows.append(
            {
                "model_id": model_id,
                "name": m.name,
                "blocks": m.block_count,
                "price_per_block_wei": m.price_per_block,
                "deprecated": m.deprecated,
                "manifest_cid": m.manifest_cid,
                "min_replicas": min(cover) if cover else 0,
            }
        )
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no models registered yet; publish one with 'shardnet model publish SOURCE --register'")
    for r in rows:
        state = "deprecated" if r["deprecated"] else f"served by >= {r['min_replicas']} node(s) per block"
        click.echo(
            f"{r['model_id']:>3}  {r['name']:<20} {r['blocks']:>4} blocks  "
            f"{r['price_per_block_wei']} wei/block  {state}"
        )


@model.command("publish")
@click.argument("source")
@click.option(
    "--quant",
    type=click.Choice(["none", "fp16", "int8", "int8-mixed"]),
    default="int8",
    show_default=True,
    help="weights at rest: blockwise int8, int8 with fp16 outlier columns, or unquantised",
)
@click.option("--block-size", type=int, default=64, show_default=True, help="values per quantization block")
@click.option("--seed", type=int, default=0, show_default=True, help="weight seed for preset configs")
@click.option("--name", help="model name (default: SOURCE)")
@click.option("--ipfs-api", help="Kubo RPC API URL (default: from the deployment file)")
@click.option(
    "--register/--no-register",
    default=False,
    help="also record the model in ModelRegistry, owned by the signing key (--keystore, SHARDNET_KEY or --dev-account)",
)
@click.option("--price-per-block", type=int, default=10**9, show_default=True, help="wei per block per job")
@key_options(default_dev_account=0)
def model_publish(
    source: str,
    quant: str,
    block_size: int,
    seed: int,
    name: str | None,
    ipfs_api: str | None,
    register: bool,
    price_per_block: int,
    keystore: Path | None,
    dev_account: int,
) -> None:
    """Cut SOURCE (a preset, 'minilm', or a transformers model directory) into blocks on IPFS."""
    from shardnet.model.architectures import PRESETS
    from shardnet.model.loading import load_model
    from shardnet.model.shards import publish
    from shardnet.storage import IpfsClient

    if block_size < 1:
        raise click.BadParameter("must be >= 1", param_hint="--block-size")
    account = load_account(keystore, dev_account) if register else None  # a bad key fails before any work
    try:
        loaded, tokenizer_dir = load_model(source, seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SOURCE") from None
    result = _check(loaded)
    if not result.exact:
        raise click.ClickException(f"not published: {result.reason()}")
    click.echo(f"checked   {result.reason()}")
    with IpfsClient(_ipfs_api(ipfs_api)) as ipfs:
        manifest = publish(loaded, ipfs, name or source, quant, block_size, tokenizer_dir=tokenizer_dir, progress=True)
    total = sum(b["bytes"] for b in manifest.blocks)
    click.echo(f"manifest  {manifest.cid}")
    click.echo(f"blocks    {len(manifest.blocks)} ({total / 1e6:.2f} MB, {quant}, block size {block_size})")
    if source in PRESETS:
        click.echo(f"seed      {seed}")
    if account is not None:
        from shardnet.bindings import ModelRegistry
        from shardnet.chain import Chain

        chain = Chain.from_deployment(account=account)
        assert manifest.cid is not None  # publish() returns the manifest with its CID
        model_id = ModelRegistry(chain).register_model(
            name or source, manifest.cid, len(manifest.blocks), manifest.blocks_root, price_per_block
        )
        click.echo(f"model id  {model_id}")


def _check(loaded: object) -> CheckResult:
    from shardnet.model.check import check_model

    click.echo("checking: the whole model against its blocks run one by one...", err=True)
    return check_model(loaded)  # type: ignore[arg-type]


@model.command("check")
@click.argument("source")
@click.option("--seed", type=int, default=0, show_default=True, help="weight seed for preset configs")
@_as_json
def model_check(source: str, seed: int, as_json: bool) -> None:
    """Run SOURCE whole and split one block per span on seeded probes (prefill, 8 cached decode
    steps, a padded batch, a route entering a span part-way; images for vision models, sentence
    pairs for encoders) and say whether every block matches in fp32 (1e-5 relative). Exits 1,
    naming the first diverging block, when it does not: such a model is never published."""
    from shardnet.model.loading import load_model

    try:
        loaded, _ = load_model(source, seed)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="SOURCE") from None
    result = _check(loaded)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(result.reason())
        for probe, diff in result.probes.items():
            click.echo(f"  {probe:<18} max abs diff {diff:.3g}")
    if not result.exact:
        raise SystemExit(1)


@model.command("inspect")
@click.argument("model_ref")
@click.option("--ipfs-api", help="Kubo RPC API URL (default: from the deployment file)")
@_as_json
def model_inspect(model_ref: str, ipfs_api: str | None, as_json: bool) -> None:
    """Show a model's manifest: MODEL_REF is a manifest CID or an on-chain model id."""
    from shardnet.model.manifest import fetch_manifest
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
