"""An event indexer: follows the contracts' events into a local SQLite database, so audits and
the explorer answer from indexed tables instead of replaying the whole history.

Two kinds of tables, written together in one transaction per block range (queries over them
are in `shardnet.index_queries`):

- `events`: every decoded event, keyed by (block, log index), with its block time. This is the
  public record; re-indexing from scratch gives the same rows.
- derived state (`jobs`, `job_stages`, `payouts`, `job_failures`, `accounts`, `nodes`, `models`,
  `assignments`, `audits`, `meta.verifier_held`): what `shardnet.ledger.Ledger` computes from those
  events. Queries read these.

The height (`meta.next_block`) moves in the same transaction as the rows, so an index killed at
any point, or whose RPC stops answering mid-sync, resumes at the first block it had not fully
stored: no gaps, no duplicates (the primary key refuses a second copy of an event anyway).
Amounts are stored as decimal text: wei values do not fit SQLite's 64-bit integers.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests
from web3 import Web3
from web3.exceptions import Web3Exception

from shardnet.chain import Chain
from shardnet.deployment import Deployment
from shardnet.errors import IndexerError
from shardnet.events import Event, EventReader
from shardnet.index_queries import IndexQueries
from shardnet.index_rows import load_job, load_ledger, write_job, write_state
from shardnet.ledger import Ledger
from shardnet.protocol import JobStatus

SCHEMA_VERSION = 4

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    block INTEGER NOT NULL, log_index INTEGER NOT NULL, time INTEGER NOT NULL, tx_hash TEXT NOT NULL,
    contract TEXT NOT NULL, name TEXT NOT NULL, job_id INTEGER, node TEXT, model_id INTEGER, args TEXT NOT NULL,
    PRIMARY KEY (block, log_index));
CREATE INDEX IF NOT EXISTS events_job ON events (job_id) WHERE job_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_node ON events (node) WHERE node IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_model ON events (model_id) WHERE model_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS jobs (
    job_id INTEGER PRIMARY KEY, client TEXT NOT NULL, model_id INTEGER NOT NULL, status TEXT NOT NULL,
    input_cid TEXT NOT NULL, params TEXT NOT NULL, max_fee TEXT NOT NULL, deadline INTEGER NOT NULL,
    escrow TEXT NOT NULL, coordinator TEXT, output_cid TEXT, paid TEXT NOT NULL, refunded TEXT NOT NULL,
    verification TEXT NOT NULL, reroutes INTEGER NOT NULL, abort_reason TEXT, posted_block INTEGER NOT NULL,
    posted_time INTEGER NOT NULL,
    updated_block INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_client ON jobs (client);
CREATE INDEX IF NOT EXISTS jobs_model ON jobs (model_id);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status);
CREATE TABLE IF NOT EXISTS job_stages (
    job_id INTEGER NOT NULL, stage INTEGER NOT NULL, node TEXT NOT NULL, start INTEGER NOT NULL,
    "end" INTEGER NOT NULL, fee TEXT NOT NULL, input_hash TEXT, output_hash TEXT, signature TEXT,
    PRIMARY KEY (job_id, stage));
CREATE INDEX IF NOT EXISTS job_stages_node ON job_stages (node);
CREATE TABLE IF NOT EXISTS payouts (
    job_id INTEGER NOT NULL, payee TEXT NOT NULL, amount TEXT NOT NULL, PRIMARY KEY (job_id, payee));
CREATE INDEX IF NOT EXISTS payouts_payee ON payouts (payee);
CREATE TABLE IF NOT EXISTS job_failures (job_id INTEGER NOT NULL, seq INTEGER NOT NULL, node TEXT NOT NULL,
    PRIMARY KEY (job_id, seq));
CREATE INDEX IF NOT EXISTS job_failures_node ON job_failures (node);
CREATE TABLE IF NOT EXISTS accounts (
    address TEXT PRIMARY KEY, credit TEXT NOT NULL, open_jobs INTEGER NOT NULL, jobs_done INTEGER NOT NULL,
    jobs_failed INTEGER NOT NULL, withdrawn TEXT NOT NULL, rewards TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS audits (
    audit_id INTEGER PRIMARY KEY, job_id INTEGER NOT NULL, node TEXT NOT NULL, resolved INTEGER NOT NULL,
    upheld INTEGER NOT NULL, slashed TEXT NOT NULL, record TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS audits_job ON audits (job_id);
CREATE TABLE IF NOT EXISTS nodes (
    address TEXT PRIMARY KEY, stake TEXT NOT NULL, pending_unstake TEXT NOT NULL, slashed TEXT NOT NULL,
    endpoint TEXT, memory_mb INTEGER, compute_score INTEGER, bandwidth_mbps INTEGER);
CREATE TABLE IF NOT EXISTS bonds (
    address TEXT PRIMARY KEY, bond TEXT NOT NULL, pending_unbond TEXT NOT NULL, fined TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS models (
    model_id INTEGER PRIMARY KEY, owner TEXT NOT NULL, name TEXT NOT NULL, manifest_cid TEXT NOT NULL,
    block_count INTEGER NOT NULL, price_per_block TEXT NOT NULL, deprecated INTEGER NOT NULL,
    blocks_root TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS assignments (
    model_id INTEGER NOT NULL, node TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    confirmed INTEGER NOT NULL, assigned_by TEXT NOT NULL, PRIMARY KEY (model_id, node));
"""


@dataclass(frozen=True)
class SyncReport:
    events: int
    blocks: int
    next_block: int
    seconds: float


# ---------------------------------------------------------------------- event args as JSON
def to_json(value: Any) -> Any:
    """Decoded event values as JSON: bytes become {"$bytes": hex}, structs objects, tuples lists."""
    if isinstance(value, bytes | bytearray):
        return {"$bytes": bytes(value).hex()}
    if hasattr(value, "keys"):
        return {k: to_json(value[k]) for k in value.keys()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def default_path(chain: Chain) -> Path:
    """Beside the deployment file's folder: `<devnet home>/index-<chain id>.sqlite`."""
    from shardnet.deployment import default_path as deployment_path

    return deployment_path().parent / f"index-{chain.chain_id}.sqlite"


class Index(IndexQueries):
    """The SQLite index of one deployment. Open it, `sync` it, query it."""

    def __init__(self, path: Path | str, chain: Chain):
        self.path = Path(path)
        self.chain = chain
        deployment = chain.deployment
        if deployment is None:
            raise IndexerError("the index needs a deployment file: pass --deployment or set SHARDNET_DEPLOYMENT")
        self.reader = EventReader(chain)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise IndexerError(
                f"{self.path} is not a usable index ({exc}); delete it to re-index from the chain"
            ) from None
        self._bind(deployment)
        self._ledger: Ledger | None = None

    # ------------------------------------------------------------------ binding and height
    def _meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _bind(self, deployment: Deployment) -> None:
        expected = {
            "schema": str(SCHEMA_VERSION),
            "chain_id": str(self.chain.chain_id),
            "market": Web3.to_checksum_address(deployment.address("JobMarket")),
            "deploy_block": str(deployment.deploy_block),
        }
        have = {k: self._meta(k) for k in expected}
        if all(v is None for v in have.values()):
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany("INSERT INTO meta VALUES (?, ?)", list(expected.items()))
                self.db.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("next_block", str(deployment.deploy_block)), ("verifier_held", "0")],
                )
            return
        for key, value in expected.items():
            if have[key] != value:
                raise IndexerError(
                    f"the index {self.path} belongs to another deployment ({key} {have[key]}, this "
                    f"deployment has {value}); delete it or pass another --db"
                )

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ sync
    def sync(
        self,
        to_block: int | None = None,
        batch_blocks: int = 2_000,
        confirmations: int = 0,
        on_batch: Callable[[int, int], None] | None = None,
    ) -> SyncReport:
        """Index every event up to `to_block` (default: the head less `confirmations`)."""
        started, events, first = time.perf_counter(), 0, self.next_block
        url = self.chain.rpc_url
        try:
            head = self.chain.w3.eth.block_number - confirmations
        except (requests.RequestException, Web3Exception, OSError) as exc:
            raise IndexerError(
                f"the RPC at {url} did not answer ({exc}); the index is unchanged, at block {first}"
            ) from None
        target = head if to_block is None else min(to_block, head)
        while self.next_block <= target:
            start = self.next_block
            end = min(target, start + batch_blocks - 1)
            try:
                batch = self._fetch(start, end)
            except (requests.RequestException, Web3Exception, OSError, ValueError) as exc:
                raise IndexerError(
                    f"the RPC at {url} stopped answering while indexing blocks {start}-{end} ({exc}); "
                    f"every block before {start} is saved: run the same command again to resume"
                ) from None
            self._store(batch, end)
            events += len(batch)
            if on_batch:
                on_batch(end, target)
        return SyncReport(events, self.next_block - first, self.next_block, time.perf_counter() - started)

    def _fetch(self, start: int, end: int) -> list[tuple[Event, int]]:
        decoded = self.reader.fetch(start, end)
        times = self._block_times(sorted({e.block_number for e in decoded}))
        return [(e, times[e.block_number]) for e in decoded]

    def _block_times(self, blocks: list[int]) -> dict[int, int]:
        if not blocks:
            return {}
        provider = self.chain.w3.provider
        batch = [("eth_getBlockByNumber", [hex(b), False]) for b in blocks]
        replies = provider.make_batch_request(batch)  # type: ignore[attr-defined]  # HTTPProvider has it
        if not isinstance(replies, list):  # a batch-level error
            raise ValueError(f"batch request failed: {replies}")
        times = {}
        for reply in replies:
            block = reply.get("result") if isinstance(reply, dict) else None
            if not block:
                raise ValueError(f"no block in reply {reply}")
            times[int(block["number"], 16) if isinstance(block["number"], str) else block["number"]] = (
                int(block["timestamp"], 16) if isinstance(block["timestamp"], str) else block["timestamp"]
            )
        return times

    def ledger(self) -> Ledger:
        """The derived state as a Ledger: accounts, nodes and models loaded; jobs loaded on demand."""
        if self._ledger is None:
            self._ledger = load_ledger(self.db)
        return self._ledger

    def _store(self, batch: list[tuple[Event, int]], end: int) -> None:
        ledger = self.ledger()
        touched = {e.args["jobId"] for e, _ in batch if "jobId" in e.args}
        for job_id in touched - ledger.jobs.keys():
            record = load_job(self.db, job_id)
            if record is not None:
                ledger.jobs[job_id] = record
        posted: dict[int, tuple[int, int]] = {}
        for event, when in batch:
            ledger.apply(event)
            if event.name == "JobPosted":
                posted[event.args["jobId"]] = (event.block_number, when)
        try:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany(
                "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        e.block_number,
                        e.log_index,
                        when,
                        e.tx_hash,
                        e.contract,
                        e.name,
                        e.args.get("jobId"),
                        e.args.get("node") or e.args.get("account"),
                        e.args.get("modelId"),
                        json.dumps(to_json(e.args)),
                    )
                    for e, when in batch
                ],
            )
            for job_id in sorted(touched):
                write_job(self.db, ledger.jobs[job_id], posted.get(job_id), end)
            if batch:
                write_state(self.db, ledger)
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'next_block'", (str(end + 1),))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            self._ledger = None  # the in-memory state ran ahead of the database: reload it
            raise
        for job_id in touched:  # settled jobs are not touched again; keep memory flat on long histories
            if ledger.jobs[job_id].status not in (JobStatus.POSTED, JobStatus.ROUTED):
                del ledger.jobs[job_id]

    # ------------------------------------------------------------------ the derived state, for audits
    def state(self) -> Ledger:
        """The derived tables, all jobs included, as a Ledger (for `shardnet.audit.reconcile`)."""
        ledger = load_ledger(self.db)
        for row in self.db.execute("SELECT job_id FROM jobs"):
            job = load_job(self.db, row[0])
            if job is not None:
                ledger.jobs[row[0]] = job
        ledger.block = self.next_block - 1
        return ledger


def open_index(chain: Chain, path: Path | str | None = None, sync: bool = True) -> Index:
    """Open (creating if needed) the deployment's index and bring it up to the chain head."""
    index = Index(path or default_path(chain), chain)
    if sync:
        index.sync()
    return index
