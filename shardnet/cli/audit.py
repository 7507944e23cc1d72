"""Auditors: jobs, nodes, models, reconciliation and receipts from chain events.

Every command reads the SQLite index (`shardnet.indexer`), bringing it up to the chain head
first (resumable: an interrupted sync continues where it stopped). `--no-sync` queries the
index as it is, without touching the RPC."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from shardnet.cli.root import _as_json, main
from shardnet.protocol import JobStatus

if TYPE_CHECKING:
    from shardnet.chain import Chain
    from shardnet.indexer import Index
    from shardnet.ledger import Ledger

F = TypeVar("F", bound=Callable[..., Any])


# ---------------------------------------------------------------------- audit (auditors)
@main.group()
def audit() -> None:
    """Audits from public chain data (any RPC URL + the deployment file)."""


def _rpc_options(fn: F) -> F:
    fn = click.option("--no-sync", is_flag=True, help="query the index as it is; do not read new blocks")(fn)
    fn = click.option(
        "--db",
        type=click.Path(path_type=Path),
        help="index file (default: index-<chain id>.sqlite beside the deployment file)",
    )(fn)
    return click.option("--rpc-url", help="JSON-RPC endpoint (default: from the deployment file)")(fn)


def _index(rpc_url: str | None, db: Path | None, no_sync: bool) -> Index:
    from shardnet.chain import Chain
    from shardnet.deployment import Deployment
    from shardnet.indexer import open_index

    chain = Chain.from_deployment(Deployment.load(), rpc_url=rpc_url)
    return open_index(chain, db, sync=not no_sync)


def _address(value: str, hint: str) -> str:
    from web3 import Web3

    if not Web3.is_address(value):
        raise click.BadParameter(f"{value!r} is not an address; use 0x followed by 40 hex digits", param_hint=hint)
    return Web3.to_checksum_address(value)


def _when(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _print_events(title: str, events: list[dict[str, Any]]) -> None:
    click.echo(f"{title}:")
    for e in events:
        click.echo(f"  {_when(e['time'])}  block {e['block']:>6}  {e['event']:<16} {e['what']}")


def _emit(data: Any, as_json: bool, table: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        table(data)


@audit.command("sync")
@_rpc_options
def audit_sync(rpc_url: str | None, db: Path | None, no_sync: bool) -> None:
    """Bring the index up to the chain head (every other command does this first)."""
    from shardnet.chain import Chain
    from shardnet.deployment import Deployment
    from shardnet.indexer import Index, default_path

    chain = Chain.from_deployment(Deployment.load(), rpc_url=rpc_url)
    with Index(db or default_path(chain), chain) as index:
        report = index.sync(on_batch=lambda end, target: click.echo(f"indexed to block {end} of {target}", err=True))
        click.echo(
            f"ok: {report.events} new events in {report.blocks} blocks ({report.seconds:.1f} s); "
            f"index at block {report.next_block - 1}, {index.path}"
        )


@audit.command("jobs")
@_rpc_options
@click.option("--model", "model_id", type=int, help="only jobs on this model")
@click.option("--client", help="only jobs posted by this address")
@click.option("--node", help="only jobs routed through this node")
@click.option("--status", type=click.Choice([s.name.lower() for s in JobStatus if s.value]))
@click.option("--from-block", type=int, help="only jobs posted at or after this block")
@click.option("--to-block", type=int, help="only jobs posted at or before this block")
@_as_json
def audit_jobs(
    rpc_url: str | None,
    db: Path | None,
    no_sync: bool,
    model_id: int | None,
    client: str | None,
    node: str | None,
    status: str | None,
    from_block: int | None,
    to_block: int | None,
    as_json: bool,
) -> None:
    """Every job, rebuilt from events."""
    client = client and _address(client, "--client")
    node = node and _address(node, "--node")
    with _index(rpc_url, db, no_sync) as index:
        rows = index.jobs(model_id, client, node, status, from_block, to_block)

    def table(rows: Any) -> None:
        click.echo(
            f"{'job':>5} {'status':<10} {'model':>5} {'client':<42} {'stages':>6} {'paid wei':>14} {'refunded':>18}"
        )
        for r in rows:
            click.echo(
                f"{r['job']:>5} {r['status']:<10} {r['model']:>5} {r['client']:<42} {r['stages']:>6} "
                f"{r['paid']:>14} {r['refunded']:>18}"
            )

    _emit(rows, as_json, table)


@audit.command("job")
@click.argument("job_id", type=int)
@_rpc_options
@_as_json
def audit_job(job_id: int, rpc_url: str | None, db: Path | None, no_sync: bool, as_json: bool) -> None:
    """One job's full timeline: posted, routed, rerouted, receipts, result, payouts, refund."""
    with _index(rpc_url, db, no_sync) as index:
        job, count = index.job(job_id), index.job_count()
    if job is None:
        known = f"jobs are numbered 1 to {count}" if count else "no job has been posted yet"
        raise click.ClickException(
            f"job {job_id} does not exist on this deployment ({known}); list them with 'shardnet audit jobs'"
        )

    def table(j: Any) -> None:
        click.echo(f"job {j['job']}: {j['status']}  model {j['model']}  client {j['client']}")
        click.echo(f"max fee {j['max_fee']} wei, escrow left {j['escrow']}, paid {j['paid']}, refunded {j['refunded']}")
        if j["abort_reason"]:
            click.echo(f"reason: {j['abort_reason']}")
        if j["output_cid"]:
            click.echo(f"output cid: {j['output_cid']}")
        for s in j["stages"]:
            hashes = f"  in {s['input_hash'][:12]}… out {s['output_hash'][:12]}…" if s["output_hash"] else ""
            click.echo(
                f"  stage {s['stage']} [{s['start']},{s['end']}) {s['node']}  fee {s['fee']} wei"
                f"  paid {j['payouts'].get(s['node'], 0)}{hashes}"
            )
        if j["failed_nodes"]:
            click.echo(f"failed: {', '.join(j['failed_nodes'])}")
        _print_events("timeline", j["timeline"])

    _emit(job, as_json, table)


@audit.command("node")
@click.argument("address")
@_rpc_options
@_as_json
def audit_node(address: str, rpc_url: str | None, db: Path | None, no_sync: bool, as_json: bool) -> None:
    """A node's stake history, spans, jobs, earnings, failures and slashes."""
    address = _address(address, "ADDRESS")
    with _index(rpc_url, db, no_sync) as index:
        info = index.node(address)
    if info is None:
        raise click.ClickException(
            f"{address} never registered as a node on this deployment; list nodes with 'shardnet audit network'"
        )

    def table(n: Any) -> None:
        for key in (
            "node",
            "endpoint",
            "stake",
            "pending_unstake",
            "slashed",
            "earned",
            "credit",
            "withdrawn",
            "jobs_done",
            "jobs_failed",
        ):
            click.echo(f"{key:<16}{n[key]}")
        click.echo(
            f"{'spans':<16}"
            + (
                ", ".join(
                    f"model {m} [{s['start']},{s['end']}){'' if s['confirmed'] else ' (unconfirmed)'}"
                    for m, s in n["spans"].items()
                )
                or "none"
            )
        )
        click.echo(f"{'jobs':<16}{', '.join(map(str, n['jobs'])) or 'none'}")
        click.echo(f"{'failures':<16}{', '.join(f'job {j}' for j in n['failures']) or 'none'}")
        _print_events("history", n["history"])

    _emit(info, as_json, table)


@audit.command("audits")
@click.option("--job", "job_id", type=int, help="only this job's audits")
@click.option("--node", help="only audits this node was judged in or sat on")
@_rpc_options
@_as_json
def audit_audits(
    job_id: int | None, node: str | None, rpc_url: str | None, db: Path | None, no_sync: bool, as_json: bool
) -> None:
    """Audits and challenges: each stage checked, its committee, the votes, the verdict, the slash."""
    node = _address(node, "--node") if node else None
    with _index(rpc_url, db, no_sync) as index:
        rows = index.audits(job_id, node)

    def table(audits: list[dict[str, Any]]) -> None:
        if not audits:
            click.echo("no audits yet")
        for a in audits:
            how = f"challenged by {a['challenger']}" if int(a["challenger"], 16) else "drawn"
            click.echo(
                f"audit {a['audit_id']}: job {a['job_id']} stage {a['stage']} ({a['node']}), {how}: "
                f"found {a['verdict']}" + (f", slashed {a['slashed']} wei" if a["upheld"] else "")
            )
            for member in a["members"]:
                vote = a["votes"].get(member, "no reveal" if member in a["committed"] else "no vote")
                extra = f", outvoted: lost {a['outvoted'][member]} wei" if member in a["outvoted"] else ""
                click.echo(f"    {member}  {vote}{extra}")

    _emit(rows, as_json, table)


@audit.command("losses")
@_rpc_options
@_as_json
def audit_losses(rpc_url: str | None, db: Path | None, no_sync: bool, as_json: bool) -> None:
    """What cheating and careless voting cost each address: slashes, penalties, reroute fines, missed reveals."""
    with _index(rpc_url, db, no_sync) as index:
        rows = index.losses()

    def table(losses: list[dict[str, Any]]) -> None:
        if not losses:
            click.echo("nobody has lost anything to an audit")
        click.echo(f"{'address':<42} {'slashed as stage':>18} {'outvoted':>18} {'reroute fines':>18} {'missed':>6}")
        for e in losses:
            click.echo(
                f"{e['address']:<42} {e['slashed_as_stage']:>18} {e['outvoted_penalties']:>18} "
                f"{e['reroute_fines']:>18} {e['audits_missed']:>6}"
            )

    _emit(rows, as_json, table)


@audit.command("model")
@click.argument("model_id", type=int)
@_rpc_options
@_as_json
def audit_model(model_id: int, rpc_url: str | None, db: Path | None, no_sync: bool, as_json: bool) -> None:
    """A model's record, span assignments, block coverage, jobs and fees."""
    with _index(rpc_url, db, no_sync) as index:
        info, count = index.model(model_id), index.model_count()
    if info is None:
        raise click.ClickException(
            f"model {model_id} does not exist on this deployment (models are numbered 1 to "
            f"{count}); list them with 'shardnet audit network'"
        )

    def table(m: Any) -> None:
        click.echo(f"model {m['model']}: {m['name']}{' (deprecated)' if m['deprecated'] else ''}  owner {m['owner']}")
        click.echo(f"manifest {m['manifest_cid']}, {m['block_count']} blocks, {m['price_per_block']} wei per block")
        for a in m["assignments"]:
            click.echo(f"  [{a['start']:>3},{a['end']:>3}) {a['node']}{'' if a['confirmed'] else '  (unconfirmed)'}")
        click.echo(f"coverage (replicas per block): {' '.join(map(str, m['coverage']))}")
        if 0 in m["coverage"]:
            click.echo(f"UNCOVERED blocks: {[b for b, c in enumerate(m['coverage']) if c == 0]}")
        click.echo(f"jobs: {m['jobs'] or 'none'}; fees paid {m['fees_paid']} wei")

    _emit(info, as_json, table)


@audit.command("network")
@_rpc_options
@_as_json
def audit_network(rpc_url: str | None, db: Path | None, no_sync: bool, as_json: bool) -> None:
    """Nodes, models and totals."""
    with _index(rpc_url, db, no_sync) as index:
        info = {**index.summary(), "node_list": index.nodes(), "model_list": index.models()}

    def table(n: Any) -> None:
        click.echo(
            f"indexed to block {n['next_block'] - 1}: {n['events']} events, {n['jobs']} jobs {n['jobs_by_status']}"
        )
        click.echo(f"{'node':<42} {'stake wei':>22} {'done':>5} {'failed':>6}  endpoint")
        for r in n["node_list"]:
            click.echo(f"{r['node']:<42} {r['stake']:>22} {r['jobs_done']:>5} {r['jobs_failed']:>6}  {r['endpoint']}")
        for m in n["model_list"]:
            click.echo(
                f"model {m['model']} {m['name']}: {m['block_count']} blocks, min replicas "
                f"{min(m['coverage'], default=0)}"
            )

    _emit(info, as_json, table)


def _check(
    rpc_url: str | None,
    db: Path | None,
    no_sync: bool,
    find: Callable[[Chain, Ledger], list[Any]],
    describe: Callable[[Any], str],
    ok_message: Callable[[Ledger], str],
) -> None:
    """Run one audit over the index; print each problem, exit 2 if any."""
    with _index(rpc_url, db, no_sync) as index:
        ledger = index.state()
        problems = find(index.chain, ledger)
    for problem in problems:
        click.echo(describe(problem))
    if problems:
        sys.exit(2)
    click.echo(ok_message(ledger))


@audit.command("reconcile")
@_rpc_options
def audit_reconcile(rpc_url: str | None, db: Path | None, no_sync: bool) -> None:
    """Compare every balance and job in the index (rebuilt from events) with contract state;
    exit 2 on any difference, naming the index row."""
    from shardnet.audit import index_label, reconcile

    _check(
        rpc_url,
        db,
        no_sync,
        lambda chain, ledger: reconcile(chain, ledger, index_label),
        lambda d: f"MISMATCH {d}",
        lambda ledger: (
            f"ok: {len(ledger.jobs)} jobs, {len(ledger.accounts)} accounts, {len(ledger.nodes)} nodes "
            "match contract state"
        ),
    )


@audit.command("verify-receipts")
@_rpc_options
def audit_verify_receipts(rpc_url: str | None, db: Path | None, no_sync: bool) -> None:
    """Re-check every receipt's EIP-712 signature and hash chain."""
    from shardnet.audit import verify_receipts

    _check(
        rpc_url,
        db,
        no_sync,
        verify_receipts,
        lambda p: f"BAD {p}",
        lambda ledger: (
            f"ok: {sum(len(j.receipts) for j in ledger.jobs.values())} receipts on "
            f"{sum(1 for j in ledger.jobs.values() if j.receipts)} jobs verified"
        ),
    )


@audit.command("verify-transcripts")
@_rpc_options
@click.option("--ipfs-api", help="Kubo RPC API URL (default: from the deployment file)")
@click.option("--timeout", type=float, default=10.0, show_default=True, help="seconds to wait for each IPFS read")
def audit_verify_transcripts(
    rpc_url: str | None, db: Path | None, no_sync: bool, ipfs_api: str | None, timeout: float
) -> None:
    """Fetch every completed job's stage transcripts from IPFS and check each against its receipt's
    hash chain (stage 0's also against the job input); exit 2 naming each job and stage that fails.
    Re-running the stages themselves: `shardnet node verify JOB`."""
    from shardnet.audit import verify_transcripts
    from shardnet.storage import IpfsClient

    def find(chain: Chain, ledger: Ledger) -> list[str]:
        assert chain.deployment is not None  # the index is bound to a deployment
        with IpfsClient(ipfs_api or chain.deployment.ipfs_api) as ipfs:
            return verify_transcripts(ledger, ipfs, timeout)

    _check(
        rpc_url,
        db,
        no_sync,
        find,
        lambda p: f"BAD {p}",
        lambda ledger: f"ok: the transcripts of {sum(1 for j in ledger.jobs.values() if j.receipts)} jobs match",
    )


@main.command("explorer")
@click.option("--rpc-url", help="JSON-RPC endpoint (default: from the deployment file)")
@click.option(
    "--db",
    type=click.Path(path_type=Path),
    help="index file (default: index-<chain id>.sqlite beside the deployment file)",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8090, show_default=True, type=int)
@click.option("--interval", default=1.0, show_default=True, type=float, help="seconds between index syncs")
def explorer(rpc_url: str | None, db: Path | None, host: str, port: int, interval: float) -> None:
    """Serve the read-only web explorer (network, jobs, nodes, models; live as blocks arrive):
    which node agents answer, amounts in ETH or gwei (wei on hover), job inputs and outputs."""
    import uvicorn

    from shardnet.chain import Chain
    from shardnet.deployment import Deployment
    from shardnet.explorer import create_app
    from shardnet.indexer import default_path
    from shardnet.storage import IpfsClient

    deployment = Deployment.load()
    chain = Chain.from_deployment(deployment, rpc_url=rpc_url)
    app = create_app(chain, db or default_path(chain), interval, ipfs=IpfsClient(deployment.ipfs_api))
    click.echo(f"explorer on http://{host}:{port} (indexing {chain.rpc_url})", err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
