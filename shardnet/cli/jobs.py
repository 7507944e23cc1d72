"""Clients: submit jobs and read their status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from shardnet.cli.root import _as_json, main, parse_wei
from shardnet.keys import key_options, load_account

if TYPE_CHECKING:
    from shardnet.client import Client, JobResult
    from shardnet.ledger import JobRecord


# ---------------------------------------------------------------------- jobs (clients)
@main.group()
def job() -> None:
    """Jobs (clients)."""


@job.command("submit")
@click.option("--model", "model_id", type=int, required=True, help="on-chain model id")
@click.option(
    "--kind", type=click.Choice(["generate", "embed", "forward", "classify"]), default="generate", show_default=True
)
@click.option("--prompt", help="generate: the prompt; forward: the text")
@click.option("--text", "texts", multiple=True, help="embed: a text to embed (repeat for several)")
@click.option(
    "--pair",
    "pairs",
    nargs=2,
    multiple=True,
    help="embed: a sentence pair for an encoder with token types, e.g. --pair 'a question' 'a passage'",
)
@click.option(
    "--image",
    "images",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    multiple=True,
    help="classify: an image file (PNG, JPEG, ...) to classify (repeat for several)",
)
@click.option("--input-ids", help="generate/forward: token ids instead of text, e.g. 1,2,3")
@click.option("--max-new-tokens", type=int, default=16, show_default=True)
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy")
@click.option("--top-k", type=int, default=0, show_default=True)
@click.option("--top-p", type=float, default=1.0, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-fee", default="0.001eth", show_default=True, help="escrow: wei, or with a unit (gwei, eth)")
@click.option(
    "--audit-rate",
    type=float,
    default=0.0,
    show_default=True,
    help="chance each stage is re-run by a committee (0..1; at least the network's rate)",
)
@click.option("--ttl", type=int, default=600, show_default=True, help="seconds until the job may be expired")
@key_options(default_dev_account=12)
@click.option("--no-wait", is_flag=True, help="print the job id and return")
@click.option("--stream", is_flag=True, help="generate: print tokens as the last stage makes them")
@click.option(
    "--private",
    is_flag=True,
    help="input, transcripts and output go to IPFS encrypted; only the route (and its checkers) read them",
)
@_as_json
def job_submit(
    model_id: int,
    kind: str,
    prompt: str | None,
    texts: tuple[str, ...],
    pairs: tuple[tuple[str, str], ...],
    images: tuple[Path, ...],
    input_ids: str | None,
    max_new_tokens: int,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
    max_fee: str,
    audit_rate: float,
    ttl: int,
    keystore: Path | None,
    dev_account: int,
    no_wait: bool,
    stream: bool,
    private: bool,
    as_json: bool,
) -> None:
    """Post a job with escrow, wait for it, print output, receipts and payouts. A private job's
    key lives in this process: it waits, hands the key to the route and opens the output."""
    from shardnet.client import Client
    from shardnet.errors import JobInputError
    from shardnet.jobs import JobParams

    params = JobParams(
        kind=kind,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
        audit_rate=audit_rate,
        private=private,
    )
    if private and (no_wait or stream):
        raise click.BadParameter(
            "a private job waits for its route (to hand it the job key) and is not streamed; drop --no-wait / --stream",
            param_hint="--private",
        )
    try:
        params.validate()
    except JobInputError as exc:
        raise click.BadParameter(str(exc)) from None
    if kind == "embed":
        if bool(texts) == bool(pairs):
            raise click.BadParameter(
                "embed jobs need --text (one or more) or --pair (one or more)", param_hint="--text"
            )
        job_input: dict[str, Any] = {"texts": list(texts)} if texts else {"pairs": [list(p) for p in pairs]}
    elif kind == "classify":
        if not images:
            raise click.BadParameter("classify jobs need at least one --image FILE", param_hint="--image")
        import base64

        job_input = {"images": [base64.b64encode(path.read_bytes()).decode() for path in images]}
    elif input_ids:
        try:
            job_input = {"input_ids": [int(i) for i in input_ids.split(",")]}
        except ValueError:
            raise click.BadParameter("use comma-separated integers, e.g. 1,2,3", param_hint="--input-ids") from None
    elif not prompt:
        raise click.BadParameter(f"{kind} jobs need --prompt or --input-ids", param_hint="--prompt")
    else:
        job_input = {"prompt": prompt} if kind == "generate" else {"text": prompt}
    client = Client.from_deployment(load_account(keystore, dev_account))
    job_id = client.submit(model_id, job_input, params, parse_wei(max_fee), ttl)
    if no_wait:
        click.echo(job_id)
        return
    click.echo(f"job {job_id} posted; waiting for a coordinator to route it...", err=True)
    if stream:
        _print_job(_stream(client, model_id, job_id, ttl + 30, as_json), as_json)
        return
    waiting = lambda why: click.echo(why, err=True)  # noqa: E731
    _print_job(client.wait(job_id, timeout_s=ttl + 30, on_change=_progress, on_waiting=waiting), as_json)


def _progress(record: JobRecord) -> None:
    """One line on stderr each time the job moves on."""
    status = record.status.name.lower()
    if status == "routed":
        hops = " -> ".join(f"{s.node[:8]}… [{s.start},{s.end})" for s in record.route)
        again = f" (rerouted {record.reroutes}x)" if record.reroutes else ""
        click.echo(f"routed{again} through {len(record.route)} stages: {hops}; running...", err=True)
    elif status != "posted":
        click.echo(f"{status}", err=True)


def _stream(client: Client, model_id: int, job_id: int, timeout_s: float, as_json: bool) -> JobResult:
    """Print a generation's tokens as they come (text when the model has a tokenizer; JSON lines
    with --json), then return the on-chain result, checked equal to what was streamed."""
    from shardnet.model.manifest import fetch_manifest, fetch_tokenizer

    manifest = fetch_manifest(client.ipfs, client.c.models.model(model_id).manifest_cid)
    tokenizer = None if as_json else fetch_tokenizer(client.ipfs, manifest)
    streamed: list[int] = []
    shown = ""

    def show(tokens: list[int]) -> None:
        nonlocal shown
        streamed.extend(tokens)
        if as_json:
            click.echo(json.dumps({"tokens": tokens}))
        elif tokenizer is None:
            click.echo(" ".join(map(str, tokens)) + " ", nl=False)
        else:
            text = tokenizer.decode(streamed, skip_special_tokens=True)
            click.echo(text[len(shown) :], nl=False)
            shown = text

    result, _ = client.stream(job_id, show, timeout_s)
    if not as_json:
        click.echo()
    return result


def _client(keystore: Path | None, dev_account: int) -> tuple[Client, str]:
    """A client signing with the keystore, SHARDNET_KEY or devnet account, and its address."""
    from shardnet.client import Client

    account = load_account(keystore, dev_account)
    return Client.from_deployment(account), account.address


@job.command("cancel")
@click.argument("job_id", type=int)
@key_options(default_dev_account=12)
@_as_json
def job_cancel(job_id: int, keystore: Path | None, dev_account: int, as_json: bool) -> None:
    """Cancel a job no coordinator has routed yet; its escrow is credited back to you at once
    (then 'shardnet job withdraw')."""
    client, address = _client(keystore, dev_account)
    client.c.market.cancel_job(job_id)
    withdrawable = client.c.market.balance(address)[0]
    if as_json:
        click.echo(json.dumps({"job_id": job_id, "status": "cancelled", "withdrawable_wei": withdrawable}))
    else:
        click.echo(f"job {job_id} cancelled; {withdrawable} wei withdrawable")


@job.command("list")
@key_options(default_dev_account=12)
@_as_json
def job_list(keystore: Path | None, dev_account: int, as_json: bool) -> None:
    """Your jobs (posted by your key): status, model, escrow, what was paid and refunded."""
    client, address = _client(keystore, dev_account)
    rows = [
        {
            "job_id": r.job_id,
            "status": r.status.name.lower(),
            "model_id": r.model_id,
            "max_fee_wei": r.max_fee,
            "paid_wei": sum(r.payouts.values()),
            "refunded_wei": r.refunded,
            "output_cid": r.output_cid,
            "abort_reason": r.abort_reason,
        }
        for r in client.jobs_of(address)
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no jobs posted by {address} yet; post one with 'shardnet job submit'")
    for row in rows:
        click.echo(
            f"{row['job_id']:>5}  {row['status']:<10} model {row['model_id']:<4} escrow {row['max_fee_wei']} wei, "
            f"paid {row['paid_wei']}, refunded {row['refunded_wei']}"
            + (f"  ({row['abort_reason']})" if row["abort_reason"] else "")
        )


@job.command("withdraw")
@key_options(default_dev_account=12)
@_as_json
def job_withdraw(keystore: Path | None, dev_account: int, as_json: bool) -> None:
    """Send you what the market and the verifier hold for you: refunds, returned audit reserves,
    challenge rewards."""
    client, address = _client(keystore, dev_account)
    sent = client.c.withdraw_all(address)
    _, pending, until = client.c.market.balance(address)
    if as_json:
        click.echo(json.dumps({"withdrawn_wei": sent, "pending_wei": pending, "pending_until": until}))
    elif not sent:
        click.echo(f"nothing to withdraw yet; {pending} wei pending until {until or '-'}")
    else:
        click.echo(", ".join(f"withdrew {v} wei from the {k}" for k, v in sent.items()))


@job.command("challenge")
@click.argument("job_id", type=int)
@click.argument("stage", type=int)
@click.option("--bond", help="wei, or with a unit (gwei, eth); default: the verifier's least bond")
@key_options(default_dev_account=12)
@_as_json
def job_challenge(
    job_id: int, stage: int, bond: str | None, keystore: Path | None, dev_account: int, as_json: bool
) -> None:
    """Send STAGE of completed job JOB_ID to a committee of other nodes, with a bond, within the
    job's challenge window. Found wrong: the node is slashed, its fee refunded to the client and
    the bond returned twice over; found right: the bond pays the committee and the node."""
    client, _ = _client(keystore, dev_account)
    record = client.history(job_id)
    if record.coordinator is None or not record.route or record.output_cid is None:
        raise click.ClickException(
            f"job {job_id} is {record.status.name.lower()}; only completed jobs can be challenged"
        )
    if not 0 <= stage < len(record.route):
        raise click.BadParameter(f"job {job_id} has stages 0..{len(record.route) - 1}", param_hint="STAGE")
    amount = parse_wei(bond) if bond else client.c.verifier.challenge_bond()
    receipt = client.c.market.challenge(job_id, record.coordinator, record.route, stage, amount)
    opened = [e.args["auditId"] for e in client.c.verifier.events_in(receipt) if e.name == "AuditOpened"]
    row = {"job_id": job_id, "stage": stage, "node": record.route[stage].node, "bond": amount, "audit_id": opened[0]}
    if as_json:
        click.echo(json.dumps(row))
    else:
        click.echo(
            f"challenged stage {stage} of job {job_id} ({row['node']}) with {amount} wei: audit {row['audit_id']}; "
            f"follow it with 'shardnet audit audits --job {job_id}'"
        )


@job.command("status")
@click.argument("job_id", type=int)
@_as_json
def job_status(job_id: int, as_json: bool) -> None:
    """A job's status, route, receipts, payouts (and the abort reason, if any)."""

    from shardnet.client import Client, JobResult
    from shardnet.protocol import SETTLED

    client = Client.from_deployment()
    record = client.history(job_id)
    output = None
    if record.output_cid and record.status in SETTLED:
        output = client.read_output(job_id, record.output_cid)  # None for a private job's sealed output
    _print_job(JobResult(record, output), as_json)


def _print_job(result: JobResult, as_json: bool) -> None:
    r = result.record
    if as_json:
        click.echo(
            json.dumps(
                {
                    "job_id": r.job_id,
                    "status": r.status.name.lower(),
                    "model_id": r.model_id,
                    "client": r.client,
                    "input_cid": r.input_cid,
                    "max_fee": r.max_fee,
                    "route": [list(s) for s in r.route],
                    "coordinator": r.coordinator,
                    "output_cid": r.output_cid,
                    "output": result.output,
                    "receipts": [["0x" + bytes(x).hex() for x in rc] for rc in r.receipts],
                    "payouts": r.payouts,
                    "refunded": r.refunded,
                    "abort_reason": r.abort_reason,
                    "failed_nodes": r.failed_nodes,
                },
                indent=2,
                default=str,
            )
        )
        return
    click.echo(f"job {r.job_id}: {r.status.name.lower()}  (model {r.model_id}, escrow {r.max_fee} wei)")
    if r.abort_reason:
        click.echo(f"reason: {r.abort_reason}")
    if r.status.name == "ABORTING":
        click.echo(
            "aborted while routed: its stages may claim what they delivered during the claim window "
            "(JobMarket.CLAIM_WINDOW) after the abort; then the job settles, and what no stage earned "
            "comes back to you ('shardnet job withdraw')"
        )
    out = result.output or {}
    if out.get("kind") == "generate":
        click.echo(f"output: {out.get('text')!r}" if out.get("text") is not None else f"tokens: {out['tokens']}")
    elif out.get("kind") == "embed":
        click.echo(f"output: {len(out['embeddings'])} embeddings of dimension {len(out['embeddings'][0])}")
    elif out.get("kind") == "classify":
        click.echo(f"output: {', '.join(map(str, out['labels']))}")
    elif out:
        click.echo(f"output: tensor of shape {out['shape']}")
    if r.output_cid:
        click.echo(f"output cid: {r.output_cid}")
    timing = out.get("timing")
    if isinstance(timing, dict):
        click.echo(_timing_line(timing))
    for k, (node, start, end, fee) in enumerate(r.route):
        receipt = r.receipts[k] if k < len(r.receipts) else None
        sig = f"  receipt in {bytes(receipt[0]).hex()[:10]}… out {bytes(receipt[1]).hex()[:10]}…" if receipt else ""
        click.echo(f"  stage {k} [{start},{end}) {node}  fee {fee} wei{sig}")
    for payee, amount in r.payouts.items():
        click.echo(f"  paid {payee}: {amount} wei")
    if r.refunded:
        click.echo(f"  refunded to client: {r.refunded} wei")


def _timing_line(timing: dict[str, Any]) -> str:
    """The output's data-plane timing in words (the last stage wrote it: only numbers are shown)."""
    number = (int, float)
    parts = []
    if isinstance(timing.get("data_plane_ms"), number):
        parts.append(f"data plane {timing['data_plane_ms']:.1f} ms")
    hops, hop_ms = timing.get("hops"), timing.get("hop_ms")
    if isinstance(hops, int) and hops > 0 and isinstance(hop_ms, number):
        parts.append(f"{hops} hops between stages, {hop_ms / hops:.2f} ms each on average")
    return "timing: " + (", ".join(parts) if parts else "not reported")
