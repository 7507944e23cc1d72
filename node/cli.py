"""`shardnet node ...`: the node agent an operator runs (registered on the `shardnet` command
through the `shardnet.commands` entry point, so the shared package never imports the node)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from eth_account.signers.local import LocalAccount

    from shardnet.bindings import Contracts


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


@node.command("verify")
@click.argument("job_id", type=int)
@click.option("--deployment", "deployment_path", type=click.Path(path_type=Path), help="deployment file")
@click.option("--rpc-url", help="JSON-RPC endpoint (default: from the deployment file)")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def node_verify(job_id: int, deployment_path: Path | None, rpc_url: str | None, as_json: bool) -> None:
    """Re-run every stage of completed job JOB_ID from its transcripts on IPFS, as a verification
    committee member would, and say which stage (if any) did not compute what it claimed; exit 2
    if one did not."""
    import json
    import sys

    from node.executor import Executor
    from node.verifier import check_job
    from shardnet.bindings import Contracts
    from shardnet.chain import Chain
    from shardnet.client import Client
    from shardnet.deployment import Deployment
    from shardnet.protocol import JobStatus
    from shardnet.storage import IpfsClient

    deployment = Deployment.load(deployment_path)
    ipfs = IpfsClient(deployment.ipfs_api)
    chain = Chain.from_deployment(deployment, rpc_url=rpc_url)
    record = Client(chain, ipfs).history(job_id)
    if record.status != JobStatus.COMPLETED or record.output_cid is None or record.coordinator is None:
        raise click.ClickException(
            f"job {job_id} is {record.status.name.lower()}; only completed jobs have stages to check"
        )
    model = Contracts(chain).models.model(record.model_id)
    output = json.loads(ipfs.cat(record.output_cid, timeout=20))
    verdicts = check_job(Executor(ipfs, 20.0), record, model.manifest_cid, output)
    rows = [
        {
            "stage": k,
            "node": s.node,
            "blocks": [s.start, s.end],
            "honest": v.honest,
            "reason": v.reason,
            "worst_relative_error": v.worst_error,
            "messages": v.messages,
        }
        for k, (s, v) in enumerate(zip(record.route, verdicts, strict=True))
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
    else:
        for row in rows:
            verdict = "honest" if row["honest"] else f"DISHONEST: {row['reason']}"
            click.echo(
                f"stage {row['stage']}  blocks {row['blocks']}  node {row['node']}  {verdict}  "
                f"(worst error {row['worst_relative_error']:.1e} over {row['messages']} messages)"
            )
    if not all(v.honest for v in verdicts):
        sys.exit(2)


def _operator(config_path: Path) -> tuple[Contracts, LocalAccount]:
    """(Contracts bound to the node's account, its address) from the node's config."""
    from node.settings import NodeSettings
    from shardnet.bindings import Contracts
    from shardnet.chain import Chain
    from shardnet.deployment import Deployment

    settings = NodeSettings.load(config_path)
    account = settings.account()
    chain = Chain.from_deployment(Deployment.load(settings.deployment), account=account)
    return Contracts(chain), account


@node.command("earnings")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, help="node.toml")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def node_earnings(config_path: Path, as_json: bool) -> None:
    """What this node may withdraw now, what is still pending (in its audit window) and until
    when, its committee pay, its stake and its failures."""
    import json
    import time

    contracts, account = _operator(config_path)
    address = account.address
    withdrawable, pending, until = contracts.market.balance(address)
    info = contracts.nodes.node(address)
    row: dict[str, str | int] = {
        "node": address,
        "withdrawable_wei": withdrawable,
        "pending_wei": pending,
        "pending_until": until,
        "committee_pay_wei": contracts.verifier.credit(address),
        "stake_wei": info.stake,
        "pending_unstake_wei": info.pending_unstake,
        "unlock_at": info.unlock_at,
        "jobs_failed": info.jobs_failed,
    }
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    for key, value in row.items():
        if key == "pending_until" and until:
            value = f"{until} (in {max(0, until - int(time.time()))} s)"
        click.echo(f"{key:<22}{value}")


@node.command("withdraw")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, help="node.toml")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def node_withdraw(config_path: Path, as_json: bool) -> None:
    """Send this node everything withdrawable: stage fees past their audit window (JobMarket) and
    committee pay (Verifier)."""
    import json

    contracts, account = _operator(config_path)
    address = account.address
    sent = contracts.withdraw_all(address)
    pending = contracts.market.balance(address)
    if as_json:
        click.echo(json.dumps({"withdrawn_wei": sent, "pending_wei": pending[1], "pending_until": pending[2]}))
    elif not sent:
        click.echo(f"nothing to withdraw yet; {pending[1]} wei pending until {pending[2] or '-'}")
    else:
        click.echo(", ".join(f"withdrew {v} wei from the {k}" for k, v in sent.items()))
