"""Operators: the node agent and the coordinator daemon."""

from __future__ import annotations

from pathlib import Path

import click

from shardnet.cli import main


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
