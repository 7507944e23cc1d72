"""Auditors: jobs, nodes, reconciliation and receipts from chain events."""

from __future__ import annotations

import json
import sys

import click

from shardnet.cli import _as_json, main


# ---------------------------------------------------------------------- audit (auditors)
@main.group()
def audit() -> None:
    """Audits from public chain data (any RPC URL + the deployment file)."""


def _audit_chain(rpc_url):
    from shardnet.chain import Chain
    from shardnet.deployment import Deployment

    return Chain.from_deployment(Deployment.load(), rpc_url=rpc_url)


_rpc = click.option("--rpc-url", help="JSON-RPC endpoint (default: from the deployment file)")


@audit.command("jobs")
@_rpc
@click.option("--model", "model_id", type=int, help="only jobs on this model")
@click.option("--client", help="only jobs posted by this address")
@click.option("--node", help="only jobs routed through this node")
@click.option("--status", type=click.Choice(["posted", "routed", "completed", "expired", "cancelled", "aborted"]))
@_as_json
def audit_jobs(rpc_url, model_id, client, node, status, as_json) -> None:
    """Every job, rebuilt from events."""
    from shardnet.audit import build_ledger

    rows = []
    for r in build_ledger(_audit_chain(rpc_url)).jobs.values():
        if (model_id is not None and r.model_id != model_id) or (client and r.client.lower() != client.lower()):
            continue
        if node and all(s[0].lower() != node.lower() for s in r.route):
            continue
        if status and r.status.name.lower() != status:
            continue
        rows.append({"job": r.job_id, "status": r.status.name.lower(), "model": r.model_id, "client": r.client,
                     "stages": len(r.route), "paid": sum(r.payouts.values()), "refunded": r.refunded})
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'job':>5} {'status':<10} {'model':>5} {'client':<42} {'stages':>6} {'paid wei':>14} {'refunded':>18}")
    for row in rows:
        click.echo(f"{row['job']:>5} {row['status']:<10} {row['model']:>5} {row['client']:<42} {row['stages']:>6} "
                   f"{row['paid']:>14} {row['refunded']:>18}")


@audit.command("node")
@click.argument("address")
@_rpc
@_as_json
def audit_node(address, rpc_url, as_json) -> None:
    """A node's stake, spans, jobs, earnings and failures, from events."""
    from web3 import Web3

    from shardnet.audit import build_ledger

    if not Web3.is_address(address):
        raise click.BadParameter("not an address; use 0x followed by 40 hex digits", param_hint="ADDRESS")
    address = Web3.to_checksum_address(address)
    ledger = build_ledger(_audit_chain(rpc_url))
    node, acct = ledger.nodes.get(address), ledger.accounts.get(address)
    if node is None:
        raise click.ClickException(f"{address} never registered as a node on this deployment")
    jobs = [j.job_id for j in ledger.jobs.values() if any(s[0] == address for s in j.route)]
    earned = sum(j.payouts.get(address, 0) for j in ledger.jobs.values())
    spans = {m: v[:2] + [bool(v[2])] for m, nodes in ledger.assignments.items() for n, v in nodes.items()
             if n == address}
    info = {"node": address, "endpoint": ledger.endpoints.get(address), "stake": node.stake,
            "pending_unstake": node.pending_unstake, "slashed": node.slashed, "spans": spans, "jobs": jobs,
            "earned": earned, "withdrawn": acct.withdrawn if acct else 0, "jobs_done": acct.jobs_done if acct else 0,
            "jobs_failed": acct.jobs_failed if acct else 0}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        click.echo(f"{key:<16}{value}")


def _check(rpc_url, find, describe, ok_message) -> None:
    """Run one audit over the ledger rebuilt from events; print each problem, exit 2 if any."""
    from shardnet.audit import build_ledger

    chain = _audit_chain(rpc_url)
    ledger = build_ledger(chain)
    problems = find(chain, ledger)
    for problem in problems:
        click.echo(describe(problem))
    if problems:
        sys.exit(2)
    click.echo(ok_message(ledger))


@audit.command("reconcile")
@_rpc
def audit_reconcile(rpc_url) -> None:
    """Rebuild every balance from events and compare with contract state (non-zero exit on any difference)."""
    from shardnet.audit import reconcile

    _check(rpc_url, reconcile, lambda d: f"MISMATCH {d}",
           lambda ledger: f"ok: {len(ledger.jobs)} jobs, {len(ledger.accounts)} accounts, {len(ledger.nodes)} nodes "
                          "match contract state")


@audit.command("verify-receipts")
@_rpc
def audit_verify_receipts(rpc_url) -> None:
    """Re-check every receipt's EIP-712 signature and hash chain."""
    from shardnet.audit import verify_receipts

    _check(rpc_url, verify_receipts, lambda p: f"BAD {p}",
           lambda ledger: f"ok: {sum(len(j.receipts) for j in ledger.jobs.values())} receipts on "
                          f"{sum(1 for j in ledger.jobs.values() if j.receipts)} jobs verified")
