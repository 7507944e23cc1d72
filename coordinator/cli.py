"""`shardnet coordinator ...`: the coordinator daemon (registered on the `shardnet` command
through the `shardnet.commands` entry point, so the shared package never imports the coordinator)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from shardnet.keys import key_options, load_account


@click.group()
def coordinator() -> None:
    """Coordinator daemon."""


@coordinator.command("run")
@key_options(default_dev_account=1)
@click.option("--deployment", "deployment_path", type=click.Path(path_type=Path), help="deployment file")
@click.option(
    "--planner",
    type=click.Choice(["pipeline", "throughput"]),
    default="pipeline",
    show_default=True,
    help="pipeline: even spans + replicas; throughput: plan from memory and measured throughput, "
    "rebalanced as nodes join, leave or speed up",
)
@click.option(
    "--replicas", type=click.IntRange(1, 8), default=2, show_default=True, help="replicas per block (throughput)"
)
@click.option(
    "--min-stages",
    type=click.IntRange(1, 64),
    default=3,
    show_default=True,
    help="spans cover at most 1/N of a model (a pipeline of >= N stages)",
)
@click.option(
    "--rebalance-interval",
    type=click.FloatRange(min=0.5),
    default=10.0,
    show_default=True,
    help="seconds between re-plans (throughput)",
)
@click.option(
    "--rebalance-factor",
    type=click.FloatRange(min=1.0),
    default=1.2,
    show_default=True,
    help="apply a re-plan when it lifts the slowest block by this factor",
)
@click.option(
    "--replan-after",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="seconds a node may be down before its spans are planned away (shorter outages are rerouted around)",
)
@click.option(
    "--confirm-timeout",
    type=click.FloatRange(min=1),
    default=300.0,
    show_default=True,
    help="seconds a node has to confirm an assigned span before it is planned away",
)
def coordinator_run(
    keystore: Path | None,
    dev_account: int,
    deployment_path: Path | None,
    planner: str,
    replicas: int,
    min_stages: int,
    rebalance_interval: float,
    rebalance_factor: float,
    replan_after: float,
    confirm_timeout: float,
) -> None:
    """Assign spans, route posted jobs and reroute around dead nodes, from chain events."""
    from coordinator.daemon import Coordinator
    from shardnet import logs
    from shardnet.deployment import Deployment

    logs.setup("coordinator")
    account = load_account(keystore, dev_account)
    from shardnet.process import run_until_signal

    run_until_signal(
        Coordinator(
            Deployment.load(deployment_path),
            account,
            planner=planner,
            replicas=replicas,
            min_stages=min_stages,
            rebalance_interval_s=rebalance_interval,
            rebalance_factor=rebalance_factor,
            replan_after_s=replan_after,
            confirm_timeout_s=confirm_timeout,
        ).run()
    )


def _bond_command(f: Any) -> Any:
    f = click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")(f)
    f = click.option("--deployment", "deployment_path", type=click.Path(path_type=Path), help="deployment file")(f)
    return key_options(default_dev_account=1)(f)


def _bond_report(
    deployment_path: Path | None, keystore: Path | None, dev_account: int, as_json: bool, act: Any
) -> None:
    """Run `act(nodes, account)` as the coordinator, then print its bond."""
    from shardnet.bindings import Contracts
    from shardnet.chain import Chain
    from shardnet.deployment import Deployment

    account = load_account(keystore, dev_account)
    contracts = Contracts(Chain.from_deployment(Deployment.load(deployment_path), account=account))
    act(contracts.nodes, account)
    bond, pending, unlock_at = contracts.nodes.coordinator_bond(account.address)
    row = {
        "coordinator": account.address,
        "bond_wei": bond,
        "min_bond_wei": contracts.nodes.min_coordinator_bond(),
        "pending_unbond_wei": pending,
        "unlock_at": unlock_at,
    }
    if as_json:
        click.echo(json.dumps(row))
        return
    click.echo(f"coordinator {account.address}: bond {bond} wei (the network requires {row['min_bond_wei']})")
    if pending:
        click.echo(f"  unbonding {pending} wei, withdrawable from {unlock_at} (unix time)")


@coordinator.command("bond")
@click.argument("amount")
@_bond_command
def coordinator_bond(
    amount: str, keystore: Path | None, dev_account: int, deployment_path: Path | None, as_json: bool
) -> None:
    """Add AMOUNT (wei, or e.g. 0.5eth) to this coordinator's bond. Rerouting (failover) needs the
    network's minimum; a reroute that a replaced node contests is fined from it."""
    from shardnet.cli.root import parse_wei

    wei = parse_wei(amount)
    _bond_report(
        deployment_path, keystore, dev_account, as_json, lambda nodes, a: nodes.bond_coordinator(wei, account=a)
    )


@coordinator.command("unbond")
@click.argument("amount")
@_bond_command
def coordinator_unbond(
    amount: str, keystore: Path | None, dev_account: int, deployment_path: Path | None, as_json: bool
) -> None:
    """Start taking AMOUNT of bond back: it stays fineable for the cooldown (longer than any job and
    the contest window of its reroutes), then 'shardnet coordinator withdraw-bond' sends it."""
    from shardnet.cli.root import parse_wei

    wei = parse_wei(amount)
    _bond_report(deployment_path, keystore, dev_account, as_json, lambda nodes, a: nodes.request_unbond(wei, account=a))


@coordinator.command("withdraw-bond")
@_bond_command
def coordinator_withdraw_bond(
    keystore: Path | None, dev_account: int, deployment_path: Path | None, as_json: bool
) -> None:
    """Withdraw the bond asked out with 'unbond', once its cooldown is over."""
    _bond_report(deployment_path, keystore, dev_account, as_json, lambda nodes, a: nodes.withdraw_unbonded(account=a))


@coordinator.command("status")
@_bond_command
def coordinator_status(keystore: Path | None, dev_account: int, deployment_path: Path | None, as_json: bool) -> None:
    """This coordinator's bond, what the network requires, and any unbonding."""
    _bond_report(deployment_path, keystore, dev_account, as_json, lambda nodes, a: None)
