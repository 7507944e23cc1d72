"""Queries over the event index (`shardnet.indexer.Index` inherits them): one job's full view,
job lists, a node, a model, the network, activity over time. Every query reads the derived
tables through indexes; nothing replays events."""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from web3 import Web3


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if value.keys() == {"$bytes"}:
            return bytes.fromhex(value["$bytes"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def describe(name: str, args: dict[str, Any]) -> str:
    """One line saying what an event means, for timelines."""
    a = args
    match name:
        case "JobPosted":
            return f"posted by {a['client']} on model {a['modelId']}, max fee {a['maxFee']} wei"
        case "JobRouted":
            return f"routed by {a['coordinator']} through {len(a['stages'])} stages"
        case "JobRerouted":
            return f"rerouted by {a['coordinator']}; replaced {', '.join(a['failedNodes']) or 'none'}"
        case "ResultSubmitted":
            return (
                f"result {a['outputCid']} submitted with {len(a['receipts'])} receipts; coordinator cut "
                f"{a['coordinatorCut']} wei, {a['refund']} wei back to the client"
            )
        case "StagePaid":
            return f"stage {a['stage']} paid {a['amount']} wei to {a['node']}"
        case "CoordinatorPaid":
            return f"coordinator {a['coordinator']} paid {a['amount']} wei"
        case "JobRefunded":
            return f"{a['amount']} wei refunded to {a['client']}"
        case "JobExpired":
            return f"expired; silent stages: {', '.join(a['failedNodes']) or 'none'}"
        case "JobCancelled":
            return "cancelled by the client"
        case "JobAborted":
            return f"aborted by {a['by']}: {a['reason']}"
        case "StageFailed":
            return f"stage failed: {a['node']}"
        case "NodeRegistered":
            return f"registered with stake {a['stake']} wei"
        case "StakeAdded":
            return f"added {a['amount']} wei, stake now {a['stake']}"
        case "UnstakeRequested":
            return f"unstake of {a['amount']} wei requested, stake now {a['stake']}"
        case "UnstakeWithdrawn":
            return f"withdrew {a['amount']} wei of unstaked funds"
        case "NodeSlashed":
            return f"slashed {a['amount']} wei by {a['by']}: {a['reason']}"
        case "ShardAssigned":
            return f"assigned blocks [{a['start']}, {a['end']}) of model {a['modelId']}"
        case "ShardConfirmed":
            return f"confirmed blocks [{a['start']}, {a['end']}) of model {a['modelId']}"
        case "ShardReleased":
            return f"released its span of model {a['modelId']}"
        case "Withdrawn":
            return f"{a['account']} withdrew {a['amount']} wei"
        case "AuditDrawn":
            return f"stage {a['stage']} ({a['node']}) drawn for audit; committee budget {a['budget']} wei"
        case "StageChallenged":
            return f"stage {a['stage']} ({a['node']}) challenged by {a['challenger']} with a {a['bond']} wei bond"
        case "StageRevoked":
            return f"stage {a['stage']} found wrong: {a['fromNode'] + a['fromCoordinator']} wei back to the client"
        case "FailureRecorded":
            return f"failure recorded for job {a['jobId']} by {a['by']}"
        case "StageReplaced":
            return (
                f"stage {a['stage']} ({a['node']}) replaced by {a['coordinator']}'s reroute; "
                f"contestable until {a['contestUntil']}"
            )
        case "RerouteContested":
            return f"{a['node']} proved it was live: failure struck off, {a['coordinator']} fined {a['fine']} wei"
        case "CoordinatorBonded":
            return f"coordinator {a['coordinator']} bonded {a['amount']} wei, bond now {a['bond']}"
        case "UnbondRequested":
            return f"coordinator {a['coordinator']} unbonding {a['amount']} wei, bond now {a['bond']}"
        case "UnbondWithdrawn":
            return f"coordinator {a['coordinator']} withdrew {a['amount']} wei of bond"
    return name


def _job_summary(row: sqlite3.Row) -> dict[str, Any]:
    out = {
        "job": row["job_id"],
        "status": row["status"],
        "model": row["model_id"],
        "client": row["client"],
        "paid": int(row["paid"]),
        "refunded": int(row["refunded"]),
        "verification": int(row["verification"]),
        "posted_block": row["posted_block"],
        "posted_time": row["posted_time"],
    }
    if "stages" in row.keys():
        out["stages"] = row["stages"]
    return out


class IndexQueries:
    db: sqlite3.Connection

    @property
    def next_block(self) -> int:
        """The first block not indexed yet (the index's height)."""
        row = self.db.execute("SELECT value FROM meta WHERE key = 'next_block'").fetchone()
        return int(row[0]) if row else 0

    def job_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])

    def jobs(
        self,
        model_id: int | None = None,
        client: str | None = None,
        node: str | None = None,
        status: str | None = None,
        from_block: int | None = None,
        to_block: int | None = None,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[dict[str, Any]]:
        where: list[str] = []
        params: list[Any] = []
        if model_id is not None:
            where.append("j.model_id = ?")
            params.append(model_id)
        if client:
            where.append("j.client = ?")
            params.append(Web3.to_checksum_address(client))
        if node:
            where.append("j.job_id IN (SELECT job_id FROM job_stages WHERE node = ?)")
            params.append(Web3.to_checksum_address(node))
        if status:
            where.append("j.status = ?")
            params.append(status)
        if from_block is not None:
            where.append("j.posted_block >= ?")
            params.append(from_block)
        if to_block is not None:
            where.append("j.posted_block <= ?")
            params.append(to_block)
        sql = (
            "SELECT j.*, (SELECT COUNT(*) FROM job_stages s WHERE s.job_id = j.job_id) AS stages FROM jobs j"
            + (" WHERE " + " AND ".join(where) if where else "")
            + f" ORDER BY j.job_id {'DESC' if newest_first else 'ASC'}"
            + (f" LIMIT {int(limit)}" if limit else "")
        )
        return [_job_summary(row) for row in self.db.execute(sql, params)]

    def job(self, job_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        job = _job_summary(row)
        job.update(
            input_cid=row["input_cid"],
            params=row["params"],
            max_fee=int(row["max_fee"]),
            deadline=row["deadline"],
            escrow=int(row["escrow"]),
            coordinator=row["coordinator"],
            output_cid=row["output_cid"],
            reroutes=row["reroutes"],
            abort_reason=row["abort_reason"],
        )
        job["stages"] = [
            {
                "stage": s["stage"],
                "node": s["node"],
                "start": s["start"],
                "end": s["end"],
                "fee": int(s["fee"]),
                "input_hash": s["input_hash"],
                "output_hash": s["output_hash"],
                "signature": s["signature"],
            }
            for s in self.db.execute("SELECT * FROM job_stages WHERE job_id = ? ORDER BY stage", (job_id,))
        ]
        job["payouts"] = {
            p["payee"]: int(p["amount"])
            for p in self.db.execute("SELECT payee, amount FROM payouts WHERE job_id = ?", (job_id,))
        }
        job["failed_nodes"] = [
            f["node"] for f in self.db.execute("SELECT node FROM job_failures WHERE job_id = ? ORDER BY seq", (job_id,))
        ]
        job["timeline"] = self.timeline("job_id = ?", (job_id,))
        return job

    def timeline(self, where: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        return [
            {
                "block": e["block"],
                "log_index": e["log_index"],
                "time": e["time"],
                "tx": e["tx_hash"],
                "event": e["name"],
                "what": describe(e["name"], from_json(json.loads(e["args"]))),
            }
            for e in self.db.execute(f"SELECT * FROM events WHERE {where} ORDER BY block, log_index", params)
        ]

    def node(self, address: str) -> dict[str, Any] | None:
        address = Web3.to_checksum_address(address)
        row = self.db.execute("SELECT * FROM nodes WHERE address = ?", (address,)).fetchone()
        if row is None:
            return None
        acct = self.db.execute("SELECT * FROM accounts WHERE address = ?", (address,)).fetchone()
        jobs = [
            r[0]
            for r in self.db.execute(
                "SELECT DISTINCT job_id FROM job_stages WHERE node = ? ORDER BY job_id", (address,)
            )
        ]
        earned = sum(int(r[0]) for r in self.db.execute("SELECT amount FROM payouts WHERE payee = ?", (address,)))
        failures = [
            r[0] for r in self.db.execute("SELECT job_id FROM job_failures WHERE node = ? ORDER BY job_id", (address,))
        ]
        spans = {
            r["model_id"]: {"start": r["start"], "end": r["end"], "confirmed": bool(r["confirmed"])}
            for r in self.db.execute("SELECT * FROM assignments WHERE node = ?", (address,))
        }
        history = self.timeline("node = ? AND job_id IS NULL", (address,))
        return {
            "node": address,
            "endpoint": row["endpoint"],
            "hardware": {
                "memory_mb": row["memory_mb"],
                "compute_score": row["compute_score"],
                "bandwidth_mbps": row["bandwidth_mbps"],
            },
            "stake": int(row["stake"]),
            "pending_unstake": int(row["pending_unstake"]),
            "slashed": int(row["slashed"]),
            "spans": spans,
            "jobs": jobs,
            "earned": earned,
            "credit": int(acct["credit"]) if acct else 0,
            "withdrawn": int(acct["withdrawn"]) if acct else 0,
            "jobs_done": acct["jobs_done"] if acct else 0,
            "jobs_failed": acct["jobs_failed"] if acct else 0,
            "failures": failures,
            "slashes": [h for h in history if h["event"] == "NodeSlashed"],
            "stake_history": [
                h
                for h in history
                if h["event"] in ("NodeRegistered", "StakeAdded", "UnstakeRequested", "UnstakeWithdrawn", "NodeSlashed")
            ],
            "history": history,
        }

    def model(self, model_id: int) -> dict[str, Any] | None:
        row = self.db.execute("SELECT * FROM models WHERE model_id = ?", (model_id,)).fetchone()
        if row is None:
            return None
        assignments = [
            {
                "node": r["node"],
                "start": r["start"],
                "end": r["end"],
                "confirmed": bool(r["confirmed"]),
                "staked": r["stake"] not in (None, "0"),
            }
            for r in self.db.execute(
                "SELECT a.*, n.stake FROM assignments a LEFT JOIN nodes n ON "
                "n.address = a.node WHERE model_id = ? ORDER BY start, a.node",
                (model_id,),
            )
        ]
        coverage = [0] * row["block_count"]  # confirmed spans of nodes that still have stake
        for a in assignments:
            if a["confirmed"] and a["staked"]:
                for b in range(a["start"], min(a["end"], row["block_count"])):
                    coverage[b] += 1
        by_status = {
            r[0]: r[1]
            for r in self.db.execute(
                "SELECT status, COUNT(*) FROM jobs WHERE model_id = ? GROUP BY status", (model_id,)
            )
        }
        paid = sum(int(r[0]) for r in self.db.execute("SELECT paid FROM jobs WHERE model_id = ?", (model_id,)))
        return {
            "model": model_id,
            "name": row["name"],
            "owner": row["owner"],
            "manifest_cid": row["manifest_cid"],
            "block_count": row["block_count"],
            "price_per_block": int(row["price_per_block"]),
            "deprecated": bool(row["deprecated"]),
            "assignments": assignments,
            "coverage": coverage,
            "jobs": by_status,
            "fees_paid": paid,
        }

    def model_count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM models").fetchone()[0])

    def models(self) -> list[dict[str, Any]]:
        ids = [r[0] for r in self.db.execute("SELECT model_id FROM models ORDER BY model_id")]
        return [m for m in map(self.model, ids) if m is not None]

    def nodes(self) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT n.*, a.jobs_done, a.jobs_failed FROM nodes n LEFT JOIN accounts a ON a.address = n.address "
            "ORDER BY n.address"
        )
        return [
            {
                "node": r["address"],
                "endpoint": r["endpoint"],
                "stake": int(r["stake"]),
                "slashed": int(r["slashed"]),
                "memory_mb": r["memory_mb"],
                "compute_score": r["compute_score"],
                "jobs_done": r["jobs_done"] or 0,
                "jobs_failed": r["jobs_failed"] or 0,
            }
            for r in rows
        ]

    def activity(self, buckets: int = 24) -> list[dict[str, Any]]:
        """Jobs posted and fees paid per time bucket, from the first job to the last."""
        rows = self.db.execute("SELECT posted_time, paid FROM jobs ORDER BY posted_time").fetchall()
        if not rows:
            return []
        first, last = rows[0][0], rows[-1][0]
        width = max(1, -(-(last - first + 1) // buckets))
        out = [{"start": first + i * width, "jobs": 0, "fees": 0} for i in range(-(-(last - first + 1) // width))]
        for t, paid in rows:
            bucket = out[(t - first) // width]
            bucket["jobs"] += 1
            bucket["fees"] += int(paid)
        return out

    def audits(self, job_id: int | None = None, node: str | None = None) -> list[dict[str, Any]]:
        """Audits (drawn or challenged), oldest first: the stage, its committee, each revealed vote
        (1 correct, 2 wrong), the verdict, what the node lost, who was outvoted or absent, who was
        paid. `node` keeps those it was judged in or sat on."""
        sql = "SELECT record FROM audits"
        params: tuple[Any, ...] = ()
        if job_id is not None:
            sql, params = sql + " WHERE job_id = ?", (job_id,)
        out = []
        for row in self.db.execute(sql + " ORDER BY audit_id", params):
            a = json.loads(row["record"])
            if node is not None and node != a["node"] and node not in a["members"]:
                continue
            a["verdict"] = ("wrong" if a["upheld"] else "right") if a["resolved"] else "open"
            a["votes"] = {m: {1: "correct", 2: "wrong"}.get(v, "?") for m, v in a["votes"].items()}
            out.append(a)
        return out

    def losses(self) -> list[dict[str, Any]]:
        """Per address, what checking cost it: stake slashed for a stage found wrong, penalties for
        votes against the majority, bond fined for reroutes a live node contested, reveals it
        missed. Biggest loss first."""
        by: dict[str, dict[str, Any]] = {}

        def entry(address: str) -> dict[str, Any]:
            return by.setdefault(
                address,
                {
                    "address": address,
                    "slashed_as_stage": 0,
                    "outvoted_penalties": 0,
                    "reroute_fines": 0,  # as a coordinator whose reroute a live node contested
                    "audits_missed": 0,
                },
            )

        for a in self.audits():
            if a["upheld"]:
                entry(a["node"])["slashed_as_stage"] += int(a["slashed"])
            for member, amount in a["outvoted"].items():
                entry(member)["outvoted_penalties"] += int(amount)
            for member in a["absent"]:
                entry(member)["audits_missed"] += 1
        for e in self.db.execute("SELECT args FROM events WHERE name = 'RerouteContested'"):
            a = from_json(json.loads(e["args"]))
            entry(a["coordinator"])["reroute_fines"] += int(a["fine"])
        for e in by.values():
            e["lost"] = e["slashed_as_stage"] + e["outvoted_penalties"] + e["reroute_fines"]
        return sorted(by.values(), key=lambda e: (-e["lost"], -e["audits_missed"], e["address"]))

    def summary(self) -> dict[str, Any]:
        by_status = {r[0]: r[1] for r in self.db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")}
        return {
            "next_block": self.next_block,
            "jobs": sum(by_status.values()),
            "jobs_by_status": by_status,
            "nodes": self.db.execute("SELECT COUNT(*) FROM nodes").fetchone()[0],
            "models": self.model_count(),
            "events": self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0],
        }
