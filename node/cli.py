"""`shardnet node ...`: the node agent an operator runs (registered on the `shardnet` command
through the `shardnet.commands` entry point, so the shared package never imports the node)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

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
    from shardnet.process import limit_malloc_arenas

    limit_malloc_arenas()  # before any thread starts
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


@node.command("status")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, help="node.toml")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def node_status(config_path: Path, as_json: bool) -> None:
    """Everything about this node in one place: whether its agent answers, its stake and unstake,
    its spans, the jobs it is running, its earnings and its failures."""
    import json

    import httpx

    contracts, account = _operator(config_path)
    address = account.address
    info = contracts.nodes.node(address)
    withdrawable, pending, until = contracts.market.balance(address)
    spans: list[dict[str, Any]] = []
    for model_id in range(1, contracts.models.model_count() + 1):
        a = contracts.models.assignment(model_id, address)
        if a.end:
            spans.append({"model_id": model_id, "blocks": [a.start, a.end], "confirmed": a.confirmed})
    try:
        health = httpx.get(info.endpoint.rstrip("/") + "/health", timeout=3).json()
    except (httpx.HTTPError, ValueError):
        health = None
    row = {
        "node": address,
        "registered": info.registered_at > 0,
        "active": contracts.nodes.is_active(address),
        "endpoint": info.endpoint,
        "alive": health is not None,
        "jobs_in_progress": health.get("jobs_in_progress") if health else None,
        "stake_wei": info.stake,
        "pending_unstake_wei": info.pending_unstake,
        "unlock_at": info.unlock_at,
        "spans": spans,
        "withdrawable_wei": withdrawable,
        "pending_wei": pending,
        "pending_until": until,
        "committee_pay_wei": contracts.verifier.credit(address),
        "jobs_failed": info.jobs_failed,
    }
    if as_json:
        click.echo(json.dumps(row, indent=2))
        return
    alive = f"answering at {info.endpoint}" if health else f"NOT answering at {info.endpoint or '(none)'}"
    click.echo(f"node {address}: {'active' if row['active'] else 'inactive'}, agent {alive}")
    if health:
        click.echo(f"  jobs in progress: {row['jobs_in_progress']}")
    click.echo(f"  stake {info.stake / 1e18:g} ETH; unstaking {info.pending_unstake / 1e18:g} ETH")
    for span in spans:
        state = "confirmed" if span["confirmed"] else "assigned, not yet confirmed"
        start, end = span["blocks"]
        click.echo(f"  model {span['model_id']}: blocks [{start},{end}) {state}")
    click.echo(
        f"  earnings: {withdrawable} wei withdrawable, {pending} wei pending, {row['committee_pay_wei']} wei "
        f"committee pay; stages failed: {info.jobs_failed}"
    )


@node.command("stake")
@click.argument("amount")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, help="node.toml")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def node_stake(amount: str, config_path: Path, as_json: bool) -> None:
    """Add AMOUNT (wei, or e.g. 0.5eth) to this node's stake."""
    from shardnet.cli.root import parse_wei

    contracts, account = _operator(config_path)
    contracts.nodes.add_stake(parse_wei(amount))
    _stake_report(contracts, account.address, as_json, "stake is now {stake} wei")


@node.command("unstake")
@click.argument("amount")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, help="node.toml")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def node_unstake(amount: str, config_path: Path, as_json: bool) -> None:
    """Start taking AMOUNT of stake back: it stays slashable for the cooldown (longer than any job
    and its audit window), then 'shardnet node exit' withdraws it."""
    from shardnet.cli.root import parse_wei

    contracts, account = _operator(config_path)
    contracts.nodes.request_unstake(parse_wei(amount))
    _stake_report(
        contracts,
        account.address,
        as_json,
        "unstaking {pending_unstake_wei} wei, withdrawable from {unlock_at} (unix time); stake left {stake} wei",
    )


def _stake_report(contracts: Contracts, address: str, as_json: bool, text: str, **extra: Any) -> None:
    """The node's stake after a command: `text` (formatted with the fields) or one JSON object."""
    import json

    info = contracts.nodes.node(address)
    row = {
        "node": address,
        "stake": info.stake,
        "pending_unstake_wei": info.pending_unstake,
        "unlock_at": info.unlock_at,
        "active": contracts.nodes.is_active(address),
        **extra,
    }
    click.echo(json.dumps(row) if as_json else text.format(**row))


@node.command("exit")
@click.option("--config", "config_path", type=click.Path(path_type=Path), required=True, help="node.toml")
@click.option("--json", "as_json", is_flag=True, help="print JSON for scripts")
def node_exit(config_path: Path, as_json: bool) -> None:
    """Leave the network: the first run unstakes everything (the node stops being routed); once
    the cooldown is over, the next run sends the stake back. Collect earnings with 'node withdraw'."""
    import time

    contracts, account = _operator(config_path)
    address, withdrawn = account.address, 0
    info = contracts.nodes.node(address)
    # the chain's clock decides (an idle devnet's last block may be older than this machine's)
    now = max(int(time.time()), int(contracts.chain.w3.eth.get_block("latest")["timestamp"]))
    if info.stake:
        contracts.nodes.request_unstake(info.stake)
        unlock_at = contracts.nodes.node(address).unlock_at
        text = (
            "unstaking all {pending_unstake_wei} wei; run 'shardnet node exit' again after {unlock_at} "
            f"(in {max(0, unlock_at - now)} s) to withdraw it; stop the agent once its jobs end"
        )
    elif info.pending_unstake and now < info.unlock_at:
        text = f"{{pending_unstake_wei}} wei unlocks at {{unlock_at}} (in {info.unlock_at - now} s)"
    elif info.pending_unstake:
        withdrawn = info.pending_unstake
        contracts.nodes.withdraw_unstaked()
        text = "withdrew {withdrawn_wei} wei of stake; this node has left the network"
    else:
        text = "nothing staked or unstaking: this node has already left"
    _stake_report(contracts, address, as_json, text, withdrawn_wei=withdrawn)
