"""`shardnet node ...`: the node agent an operator runs (registered on the `shardnet` command
through the `shardnet.commands` entry point, so the shared package never imports the node)."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def node() -> None:
    """Node agent (operators)."""


@node.command("run")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, help="node.toml")
def node_run(config_path: Path) -> None:
    """Register (staking if needed), serve assigned spans, run jobs, get paid."""
    from node.agent import run_node
    from node.settings import NodeSettings
    from shardnet import logs
    from shardnet.process import run_until_signal

    settings = NodeSettings.load(config_path)
    logs.setup(f"node:{settings.listen_port}")
    run_until_signal(run_node(settings))
