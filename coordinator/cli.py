"""`shardnet coordinator ...`: the coordinator daemon (registered on the `shardnet` command
through the `shardnet.commands` entry point, so the shared package never imports the coordinator)."""

from __future__ import annotations

from pathlib import Path

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
