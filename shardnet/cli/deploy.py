"""`shardnet deploy`: the contracts on any EVM JSON-RPC chain (a testnet, an L2, a Hardhat or
Anvil node), and the deployment file every other command works from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from shardnet.cli.root import main
from shardnet.keys import key_options, load_account


@main.command("deploy")
@click.option("--rpc-url", required=True, help="the chain's JSON-RPC endpoint (http or https)")
@click.option("--ws-url", help="its websocket endpoint for event subscriptions (default: the RPC URL as ws)")
@click.option("--ipfs-api", required=True, help="the Kubo RPC API that clients and nodes use, e.g. http://host:5001")
@click.option(
    "--ipfs-peer",
    "ipfs_peers",
    multiple=True,
    help="a swarm multiaddr (/ip4/…/tcp/…/p2p/<peer id>) of the daemon behind --ipfs-api, for nodes that run "
    "their own IPFS daemon (repeat)",
)
@click.option(
    "--coordinator",
    "coordinators",
    multiple=True,
    help="an address granted the coordinator role (repeat; default: the deploying account)",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("deployment.json"),
    show_default=True,
    help="the deployment file to write (attach: when it already matches the chain, nothing is deployed)",
)
@key_options(default_dev_account=0)
def deploy(
    rpc_url: str,
    ws_url: str | None,
    ipfs_api: str,
    ipfs_peers: tuple[str, ...],
    coordinators: tuple[str, ...],
    out: Path,
    keystore: Path | None,
    dev_account: int,
) -> None:
    """Deploy and wire NodeRegistry, ModelRegistry, JobMarket and Verifier (the signing account
    becomes their admin), or attach to the ones --out already names; write --out. The market's
    terms come from SHARDNET_* settings (see 'shardnet devnet' and the README)."""
    from web3 import Web3

    from shardnet.devnet import DevnetSettings, ensure_deployed

    admin = load_account(keystore, dev_account)
    for address in coordinators:
        if not Web3.is_address(address):
            raise click.BadParameter(f"{address!r} is not an address (0x + 40 hex digits)", param_hint="--coordinator")
    for peer in ipfs_peers:
        if not peer.startswith("/") or "/p2p/" not in peer:
            raise click.BadParameter(f"{peer!r} is not a multiaddr ending in /p2p/<peer id>", param_hint="--ipfs-peer")
    granted = [Web3.to_checksum_address(a) for a in coordinators] or [admin.address]
    ws = ws_url or rpc_url.replace("https://", "wss://").replace("http://", "ws://")
    deployment, deployed = ensure_deployed(
        rpc_url, ws, ipfs_api, out, DevnetSettings(), admin=admin, coordinators=granted
    )
    if ipfs_peers and list(ipfs_peers) != deployment.ipfs_peers:
        deployment = dataclasses.replace(deployment, ipfs_peers=list(ipfs_peers))
        deployment.save(out)
    verb = "deployed" if deployed else "attached to the existing"
    click.echo(f"{verb} contracts on chain {deployment.chain_id} (from block {deployment.deploy_block}):")
    for name, record in deployment.contracts.items():
        click.echo(f"  {name:<14}{record.address}")
    click.echo(f"deployment file: {out}  (point tools at it with SHARDNET_DEPLOYMENT={out})")
