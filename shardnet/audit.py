"""Audits from public chain data alone: rebuild every job and balance from events, compare
with contract state, and re-check every receipt signature.

Everything here reads events through `Ledger`; `reconcile` then reads contract state to
compare. Differences are reported with where they are (which job, which account, which field).
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_account import Account
from eth_account.messages import encode_typed_data

from shardnet.bindings import RECEIPT_TYPES, Contracts, output_hash_of, receipt_domain
from shardnet.chain import Chain
from shardnet.events import EventFollower
from shardnet.ledger import Ledger


@dataclass(frozen=True)
class Difference:
    where: str  # e.g. "job 7", "account 0xabc…", "JobMarket balance"
    field: str
    from_events: object
    on_chain: object

    def __str__(self) -> str:
        return f"{self.where}: {self.field} is {self.from_events} from events but {self.on_chain} on-chain"


def build_ledger(chain: Chain) -> Ledger:
    deployment = chain.deployment
    ledger = Ledger()
    addresses = [deployment.address(n) for n in ("NodeRegistry", "ModelRegistry", "JobMarket")]
    for event in EventFollower(chain, addresses, start_block=deployment.deploy_block).poll():
        ledger.apply(event)
    return ledger


def events_label(kind: str, key) -> str:
    return f"{kind} {key}"


def index_label(kind: str, key) -> str:
    """Names the index row a figure came from, e.g. `index row jobs[job_id=7]`."""
    table, column = {"job": ("jobs", "job_id"), "account": ("accounts", "address"), "node": ("nodes", "address")}[kind]
    return f"index row {table}[{column}={key}]"


def reconcile(chain: Chain, ledger: Ledger, label=events_label) -> list[Difference]:
    """Every balance and job field rebuilt from events (or read from the index, with
    `label=index_label`), compared with contract state."""
    c = Contracts(chain)
    diffs: list[Difference] = []

    def check(where, field, events_value, chain_value):
        if events_value != chain_value:
            diffs.append(Difference(where, field, events_value, chain_value))

    for job_id, rec in sorted(ledger.jobs.items()):
        job = c.market.job(job_id)
        check(label("job", job_id), "status", rec.status.name.lower(), job.status.name.lower())
        check(label("job", job_id), "escrow", rec.escrow, job.escrow)
        check(label("job", job_id), "client", rec.client, job.client)
    check("JobMarket", "job count", len(ledger.jobs), c.market.job_count())
    for address, rec in sorted(ledger.accounts.items()):
        acct = c.market.account(address)
        for field in ("credit", "open_jobs", "jobs_done", "jobs_failed"):
            check(label("account", address), field, getattr(rec, field), getattr(acct, field))
    for address, rec in sorted(ledger.nodes.items()):
        info = c.nodes.node(address)
        check(label("node", address), "stake", rec.stake, info.stake)
        check(label("node", address), "pending_unstake", rec.pending_unstake, info.pending_unstake)
    check("NodeRegistry", "slashed balance", ledger.slashed_balance, c.nodes.slashed_balance())
    escrows = sum(r.escrow for r in ledger.jobs.values())
    credits = sum(r.credit for r in ledger.accounts.values())
    check("JobMarket", "ETH balance (escrows + credits)", escrows + credits, chain.w3.eth.get_balance(c.market.address))
    stakes = sum(n.stake + n.pending_unstake for n in ledger.nodes.values())
    check(
        "NodeRegistry",
        "ETH balance (stakes + slashed)",
        stakes + ledger.slashed_balance,
        chain.w3.eth.get_balance(c.nodes.address),
    )
    return diffs


def verify_receipts(chain: Chain, ledger: Ledger) -> list[str]:
    """Re-check every submitted receipt: EIP-712 signer = the stage's node, hashes chained, the
    last output hash = keccak(output CID). Returns the problems found (empty = all good)."""
    market = chain.deployment.address("JobMarket")
    domain = receipt_domain(chain.chain_id, market)
    problems = []
    for job_id, rec in sorted(ledger.jobs.items()):
        if not rec.receipts:
            continue
        for k, ((node, start, end, _), (in_hash, out_hash, signature)) in enumerate(
            zip(rec.route, rec.receipts, strict=True)
        ):
            message = {
                "jobId": job_id,
                "stage": k,
                "start": start,
                "end": end,
                "inputHash": bytes(in_hash),
                "outputHash": bytes(out_hash),
            }
            try:
                signer = Account.recover_message(
                    encode_typed_data(domain, RECEIPT_TYPES, message), signature=bytes(signature)
                )
            except ValueError as exc:
                problems.append(f"job {job_id} stage {k}: unreadable signature ({exc})")
                continue
            if signer != node:
                problems.append(f"job {job_id} stage {k}: receipt signed by {signer}, route names {node}")
            if k and bytes(in_hash) != bytes(rec.receipts[k - 1][1]):
                problems.append(f"job {job_id} stage {k}: input hash does not follow stage {k - 1}'s output")
        if bytes(rec.receipts[-1][1]) != output_hash_of(rec.output_cid):
            problems.append(f"job {job_id}: last output hash is not keccak(output CID)")
    return problems
