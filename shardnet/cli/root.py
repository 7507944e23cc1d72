"""`shardnet` command line. Errors print one line naming the fix; no tracebacks.

This module holds the root group and the devnet/contracts commands; each user's commands
live beside it (models, jobs, audit) and `shardnet.cli` puts them together."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from shardnet.errors import ShardnetError

if TYPE_CHECKING:
    from shardnet.devnet import DevnetSettings


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ShardnetError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


@click.group(cls=_Group)
def main() -> None:
    """shardnet: run large models across many machines, coordinated on-chain."""


# ---------------------------------------------------------------------- devnet
def _devnet_settings(home: Path | None, chain_port: int | None, ipfs_port: int | None) -> DevnetSettings:
    from shardnet.devnet import DevnetSettings

    overrides: dict[str, Any] = {
        k: v for k, v in {"home": home, "chain_port": chain_port, "ipfs_port": ipfs_port}.items() if v is not None
    }
    return DevnetSettings(**overrides)


_home = click.option("--home", type=click.Path(path_type=Path), help="devnet folder (default <repo>/.devnet)")
_chain_port = click.option("--chain-port", type=int, help="Anvil port (default 8545)")
_ipfs_port = click.option("--ipfs-port", type=int, help="IPFS RPC API port (default 5001)")
_as_json = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")


def _print_status(info: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(
        f"chain         {info['rpc_url']}  (ws {info['ws_url']})  chain id {info['chain_id']}, "
        f"block {info['block_number']}"
    )
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
def devnet_up(home: Path | None, chain_port: int | None, ipfs_port: int | None, as_json: bool) -> None:
    """Start the chain and IPFS (if not running), deploy contracts (if needed)."""
    from shardnet import devnet as dn

    started = time.monotonic()
    info = dn.up(_devnet_settings(home, chain_port, ipfs_port))
    if not as_json:
        what = ", ".join(info["started"]) or "nothing (already running)"
        click.echo(
            f"started {what}; contracts {'deployed' if info['deployed'] else 'already deployed'} "
            f"in {time.monotonic() - started:.1f} s"
        )
    _print_status(info, as_json)


@devnet.command("status")
@_home
@_as_json
def devnet_status(home: Path | None, as_json: bool) -> None:
    """Chain id, block number, contract addresses, IPFS peer id."""
    from shardnet import devnet as dn

    _print_status(dn.status(_devnet_settings(home, None, None)), as_json)


@devnet.command("down")
@_home
def devnet_down(home: Path | None) -> None:
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
def contracts_compile(force: bool) -> None:
    """Compile contracts/ (cached by source hash) into build/contracts/."""
    from shardnet import compiler

    for name, artifact in compiler.compile_contracts(force=force).items():
        click.echo(f"{name:<14} {len(artifact.bytecode) // 2 - 1:>6} bytes  {artifact.compiler}")


def parse_wei(text: str) -> int:
    """An amount of ether: wei, or with a unit ("0.5eth", "20gwei", "1000wei")."""
    from decimal import Decimal, InvalidOperation

    value = text.strip().lower()
    try:
        for unit, factor in (("gwei", 10**9), ("eth", 10**18), ("wei", 1)):
            if value.endswith(unit):
                return int(Decimal(value[: -len(unit)]) * factor)
        return int(value)
    except (ValueError, InvalidOperation):
        raise click.BadParameter(f"{text!r} is not an amount; write wei, or e.g. 0.5eth or 20gwei") from None
