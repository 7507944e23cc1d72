"""`shardnet` command line: the root group and the devnet/contracts commands (`root`), each
user's commands (models, jobs, audit), and the node and coordinator packages' own groups
(`shardnet node`, `shardnet coordinator`), found through the `shardnet.commands` entry point so
this shared package never imports them."""

from __future__ import annotations

from importlib.metadata import entry_points

import click

from shardnet.cli import audit, deploy, gateway, jobs, models  # noqa: F401  (each registers its group on the root)
from shardnet.cli.root import main


def _add_plugin_commands() -> None:
    for entry in entry_points(group="shardnet.commands"):
        command = entry.load()
        if isinstance(command, click.Command):
            main.add_command(command, entry.name)


def run() -> None:
    """The `shardnet` command (and `python -m shardnet.cli`): the root group, then a quick exit
    (`shardnet.process.exit_now`)."""
    from shardnet.process import run_then_exit

    run_then_exit(main)


_add_plugin_commands()
__all__ = ["main", "run"]
