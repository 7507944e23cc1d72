"""Audits from public chain data alone: rebuild every job and balance from events, compare
with contract state, and re-check every receipt signature.

Everything here reads events through `Ledger`; `reconcile` then reads contract state to
compare. Differences are reported with where they are (which job, which account, which field).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from web3.types import BlockIdentifier

from shardnet.bindings import Contracts
from shardnet.chain import Chain
from shardnet.errors import StorageError
from shardnet.events import EventReader
from shardnet.ledger import Ledger
from shardnet.sealing import is_sealed
from shardnet.storage import IpfsClient
from shardnet.transcripts import Transcript, TranscriptError, mismatch


@dataclass(frozen=True)
class Difference:
    where: str  # e.g. "job 7", "account 0xabc…", "JobMarket balance"
    field: str
    from_events: object
    on_chain: object

    def __str__(self) -> str:
        return f"{self.where}: {self.field} is {self.from_events} from events but {self.on_chain} on-chain"


def build_ledger(chain: Chain) -> Ledger:
    """Every event since the deployment block, applied in chain order."""
    ledger, reader = Ledger(), EventReader(chain)
    for event in reader.poll():
        ledger.apply(event)
    ledger.block = reader.next_block - 1
    return ledger


Label = Callable[[str, Any], str]


def events_label(kind: str, key: Any) -> str:
    return f"{kind} {key}"


def index_label(kind: str, key: Any) -> str:
    """Names the index row a figure came from, e.g. `index row jobs[job_id=7]`."""
    table, column = {
        "job": ("jobs", "job_id"),
        "account": ("accounts", "address"),
        "node": ("nodes", "address"),
        "coordinator": ("bonds", "address"),
    }[kind]
    return f"index row {table}[{column}={key}]"


def reconcile(chain: Chain, ledger: Ledger, label: Label = events_label) -> list[Difference]:
    """Every balance and job field rebuilt from events (or read from the index, with
    `label=index_label`), compared with contract state after the ledger's last block (so a
    transaction mined meanwhile is not a difference)."""
    block: BlockIdentifier = "latest" if ledger.block is None else ledger.block
    c = Contracts(chain, block)
    diffs: list[Difference] = []

    def check(where: str, field: str, events_value: object, chain_value: object) -> None:
        if events_value != chain_value:
            diffs.append(Difference(where, field, events_value, chain_value))

    for job_id, rec in sorted(ledger.jobs.items()):
        job = c.market.job(job_id)
        check(label("job", job_id), "status", rec.status.name.lower(), job.status.name.lower())
        check(label("job", job_id), "escrow", rec.escrow, job.held)
        check(label("job", job_id), "client", rec.client, job.client)
    check("JobMarket", "job count", len(ledger.jobs), c.market.job_count())
    for address, account in sorted(ledger.accounts.items()):
        acct = c.account(address)
        check(label("account", address), "credit", account.credit, acct.credit + acct.pending)
        check(label("account", address), "jobs_failed", account.jobs_failed, acct.jobs_failed)
        check(label("account", address), "rewards", account.rewards, c.verifier.credit(address))
    for address, node in sorted(ledger.nodes.items()):
        info = c.nodes.node(address)
        check(label("node", address), "stake", node.stake, info.stake)
        check(label("node", address), "pending_unstake", node.pending_unstake, info.pending_unstake)
    for address, bond in sorted(ledger.bonds.items()):
        have, pending, _ = c.nodes.coordinator_bond(address)
        check(label("coordinator", address), "bond", (bond.bond, bond.pending_unbond), (have, pending))
    check(
        "Verifier",
        "ETH balance (open audits + rewards)",
        ledger.verifier_held,
        chain.w3.eth.get_balance(c.verifier.address, block),
    )
    escrows = sum(r.escrow for r in ledger.jobs.values())
    credits = sum(r.credit for r in ledger.accounts.values())
    check(
        "JobMarket",
        "ETH balance (escrows + credits)",
        escrows + credits,
        chain.w3.eth.get_balance(c.market.address, block),
    )
    stakes = sum(n.stake + n.pending_unstake for n in ledger.nodes.values())
    stakes += sum(b.bond + b.pending_unbond for b in ledger.bonds.values())
    check(
        "NodeRegistry",
        "ETH balance (stakes and coordinator bonds)",
        stakes,
        chain.w3.eth.get_balance(c.nodes.address, block),
    )
    return diffs


def verify_receipts(chain: Chain, ledger: Ledger) -> list[str]:
    """Re-check every submitted receipt: EIP-712 signer = the stage's node, hashes chained, the
    last output hash = keccak(output CID). Returns the problems found (empty = all good)."""
    domain = Contracts(chain).market.receipts
    problems: list[str] = []
    for job_id, rec in sorted(ledger.jobs.items()):
        if rec.receipts and rec.coordinator is not None:
            problems += domain.problems(job_id, rec.coordinator, rec.route, rec.receipts, rec.output_cid)
    return problems


def verify_transcripts(ledger: Ledger, ipfs: IpfsClient, timeout_s: float = 10.0) -> list[str]:
    """Every completed job's stage transcripts (listed in its output on IPFS) against its receipts:
    each transcript's hash chain must give its stage's receipt hashes, and stage 0's first message
    must be the job's input. A private job's output and transcripts are sealed (shardnet.sealing):
    they are left to the committees that hold its key. Only hashes are compared here; re-running
    the stages is a node's job (`shardnet node verify`). Returns the problems found (a transcript
    no longer on IPFS is one)."""
    problems: list[str] = []
    for job_id, rec in sorted(ledger.jobs.items()):
        if not rec.receipts or rec.output_cid is None:
            continue
        try:
            raw = ipfs.cat(rec.output_cid, timeout=timeout_s)
            if is_sealed(raw):  # a private job: its committees check it, with its key
                continue
            output = json.loads(raw)
            cids = output.get("transcripts") if isinstance(output, dict) else None
            if not isinstance(cids, list) or len(cids) != len(rec.route):
                problems.append(f"job {job_id}: its output lists no transcript per stage")
                continue
            for k, (cid, receipt) in enumerate(zip(cids, rec.receipts, strict=True)):
                transcript = Transcript.decode(ipfs.cat(cid, timeout=timeout_s))
                job_input = ipfs.cat(rec.input_cid, timeout=timeout_s) if k == 0 else None
                reason = mismatch(transcript, receipt, k == len(rec.route) - 1, job_input)
                if reason:
                    problems.append(f"job {job_id} stage {k}: transcript {cid}: {reason}")
        except (StorageError, TranscriptError, ValueError) as exc:
            problems.append(f"job {job_id}: transcripts unreadable ({exc})")
    return problems
