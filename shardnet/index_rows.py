"""The index's derived tables <-> `Ledger` records: how `shardnet.indexer.Index` writes what the
ledger computed from a block range, and reads it back. Amounts are decimal text (wei does not
fit SQLite's 64-bit integers); hashes and signatures are 0x-hex."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import asdict

from shardnet.ledger import AccountRecord, AuditRecord, BondRecord, JobRecord, Ledger, NodeRecord
from shardnet.protocol import Assignment, Hardware, JobStatus, Model, Receipt, Stage


def _hex(b: bytes | None) -> str | None:
    return None if b is None else "0x" + bytes(b).hex()


def _unhex(s: str) -> bytes:
    return bytes.fromhex(s.removeprefix("0x"))


def write_job(db: sqlite3.Connection, job: JobRecord, posted: tuple[int, int] | None, block: int) -> None:
    if posted is None:
        posted = db.execute("SELECT posted_block, posted_time FROM jobs WHERE job_id = ?", (job.job_id,)).fetchone()
    db.execute(
        "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            job.job_id,
            job.client,
            job.model_id,
            job.status.name.lower(),
            job.input_cid,
            job.params.hex(),
            str(job.max_fee),
            job.deadline,
            str(job.escrow),
            job.coordinator,
            job.output_cid,
            str(sum(job.payouts.values())),
            str(job.refunded),
            str(job.verification),
            job.reroutes,
            job.abort_reason,
            posted[0],
            posted[1],
            block,
        ),
    )
    db.execute("DELETE FROM job_stages WHERE job_id = ?", (job.job_id,))
    receipts: list[Receipt | None] = list(job.receipts) or [None] * len(job.route)
    db.executemany(
        "INSERT INTO job_stages VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (job.job_id, k, s.node, s.start, s.end, str(s.fee), *_receipt_row(r))
            for k, (s, r) in enumerate(zip(job.route, receipts, strict=True))
        ],
    )
    db.execute("DELETE FROM payouts WHERE job_id = ?", (job.job_id,))
    db.executemany(
        "INSERT INTO payouts VALUES (?, ?, ?)",
        [(job.job_id, payee, str(amount)) for payee, amount in job.payouts.items()],
    )
    db.execute("DELETE FROM job_failures WHERE job_id = ?", (job.job_id,))
    db.executemany(
        "INSERT INTO job_failures VALUES (?, ?, ?)", [(job.job_id, k, node) for k, node in enumerate(job.failed_nodes)]
    )


def _receipt_row(r: Receipt | None) -> tuple[str | None, str | None, str | None]:
    return (None, None, None) if r is None else (_hex(r.input_hash), _hex(r.output_hash), _hex(r.signature))


def write_state(db: sqlite3.Connection, ledger: Ledger) -> None:
    db.executemany(
        "INSERT OR REPLACE INTO accounts VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (a, str(r.credit), r.open_jobs, r.jobs_done, r.jobs_failed, str(r.withdrawn), str(r.rewards))
            for a, r in ledger.accounts.items()
        ],
    )
    db.executemany(
        "INSERT OR REPLACE INTO audits VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (a.audit_id, a.job_id, a.node, int(a.resolved), int(a.upheld), str(a.slashed), json.dumps(asdict(a)))
            for a in ledger.audits.values()
        ],
    )
    db.executemany(
        "INSERT OR REPLACE INTO nodes VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                a,
                str(r.stake),
                str(r.pending_unstake),
                str(r.slashed),
                ledger.endpoints.get(a),
                *(ledger.hardware.get(a) or (None, None, None)),
            )
            for a, r in ledger.nodes.items()
        ],
    )
    db.executemany(
        "INSERT OR REPLACE INTO bonds VALUES (?, ?, ?, ?)",
        [(a, str(b.bond), str(b.pending_unbond), str(ledger.reroute_fines.get(a, 0))) for a, b in ledger.bonds.items()],
    )
    db.executemany(
        "INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                m.model_id,
                m.owner,
                m.name,
                m.manifest_cid,
                m.block_count,
                str(m.price_per_block),
                int(m.deprecated),
                _hex(m.blocks_root),
            )
            for m in ledger.models.values()
        ],
    )
    db.execute("DELETE FROM assignments")
    db.executemany(
        "INSERT INTO assignments VALUES (?, ?, ?, ?, ?, ?)",
        [
            (m, node, a.start, a.end, int(a.confirmed), a.assigned_by)
            for m, nodes in ledger.assignments.items()
            for node, a in nodes.items()
        ],
    )
    db.execute("UPDATE meta SET value = ? WHERE key = 'verifier_held'", (str(ledger.verifier_held),))


def load_ledger(db: sqlite3.Connection) -> Ledger:
    ledger = Ledger()
    for r in db.execute("SELECT * FROM accounts"):
        ledger.accounts[r["address"]] = AccountRecord(
            int(r["credit"]), r["open_jobs"], r["jobs_done"], r["jobs_failed"], int(r["withdrawn"]), int(r["rewards"])
        )
    for r in db.execute("SELECT record FROM audits"):
        data = json.loads(r["record"])
        data["paid"] = [tuple(p) for p in data["paid"]]
        ledger.audits[data["audit_id"]] = AuditRecord(**data)
    for r in db.execute("SELECT * FROM nodes"):
        ledger.nodes[r["address"]] = NodeRecord(int(r["stake"]), int(r["pending_unstake"]), int(r["slashed"]))
        if r["endpoint"] is not None:
            ledger.endpoints[r["address"]] = r["endpoint"]
        if r["memory_mb"] is not None:
            ledger.hardware[r["address"]] = Hardware(r["memory_mb"], r["compute_score"], r["bandwidth_mbps"])
    for r in db.execute("SELECT * FROM bonds"):
        ledger.bonds[r["address"]] = BondRecord(int(r["bond"]), int(r["pending_unbond"]))
        if int(r["fined"]):
            ledger.reroute_fines[r["address"]] = int(r["fined"])
    for r in db.execute("SELECT * FROM models"):
        ledger.models[r["model_id"]] = Model(
            r["model_id"],
            r["owner"],
            r["block_count"],
            bool(r["deprecated"]),
            int(r["price_per_block"]),
            _unhex(r["blocks_root"]),
            r["name"],
            r["manifest_cid"],
        )
    for r in db.execute("SELECT * FROM assignments"):
        ledger.assignments[r["model_id"]][r["node"]] = Assignment(
            r["start"], r["end"], bool(r["confirmed"]), r["assigned_by"]
        )
    ledger.verifier_held = int(db.execute("SELECT value FROM meta WHERE key = 'verifier_held'").fetchone()[0])
    return ledger


def load_job(db: sqlite3.Connection, job_id: int) -> JobRecord | None:
    r = db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    if r is None:
        return None
    stages = db.execute("SELECT * FROM job_stages WHERE job_id = ? ORDER BY stage", (job_id,)).fetchall()
    job = JobRecord(
        job_id,
        r["client"],
        r["model_id"],
        r["input_cid"],
        bytes.fromhex(r["params"]),
        int(r["max_fee"]),
        r["deadline"],
        status=JobStatus[r["status"].upper()],
        escrow=int(r["escrow"]),
        coordinator=r["coordinator"],
        reroutes=r["reroutes"],
        output_cid=r["output_cid"],
        refunded=int(r["refunded"]),
        verification=int(r["verification"]),
        abort_reason=r["abort_reason"],
    )
    job.route = [Stage(s["node"], s["start"], s["end"], int(s["fee"])) for s in stages]
    if stages and stages[0]["signature"] is not None:
        job.receipts = [
            Receipt(_unhex(s["input_hash"]), _unhex(s["output_hash"]), _unhex(s["signature"])) for s in stages
        ]
    job.payouts = {
        p["payee"]: int(p["amount"])
        for p in db.execute("SELECT payee, amount FROM payouts WHERE job_id = ?", (job_id,))
    }
    job.failed_nodes = [
        f[0] for f in db.execute("SELECT node FROM job_failures WHERE job_id = ? ORDER BY seq", (job_id,))
    ]
    return job
