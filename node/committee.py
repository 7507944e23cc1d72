"""The node as a checker of others: it opens the audits drawn for completed jobs, and when it is
drawn onto a committee it re-runs the stage from its transcript, commits a hash of its vote,
reveals it, and resolves the audit.

Every node sees every result. The draw is a function of the result block's hash
(`shardnet.audits`), so each node knows at once whether a job was drawn; the nodes take turns in
an order that depends on the job, so usually one transaction opens the audits. Committee work
is paid by the Verifier, and a member that does not reveal is recorded failed, so a node does
this for its own sake.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from functools import partial
from typing import Any

from eth_abi.abi import encode
from eth_account.signers.local import LocalAccount
from eth_utils.crypto import keccak

from node.executor import Executor
from node.misbehave import Misbehaviour
from node.privacy import JobKeys
from node.state import AgentState
from node.verifier import SpanCache, Verdict, check_stage
from shardnet.audits import audited_stages
from shardnet.bindings import Contracts, read_waiting, send_logged
from shardnet.chain import Chain
from shardnet.errors import ContentNotFound, JobInputError, ShardnetError, StorageUnavailable
from shardnet.jobs import JobParams
from shardnet.ledger import Ledger
from shardnet.protocol import JobStatus, Vote
from shardnet.sealing import decrypt, is_sealed

log = logging.getLogger("shardnet.node.committee")
DRAW_GAS = 3_000_000  # drawAudits: up to every stage, each drawing a committee over the node list
REVEAL_GAS = 200_000
RESOLVE_GAS = 1_500_000  # slashes, a take-back through the market, a credit per member
TURN_S = 1.5  # how long each node waits for the ones before it to open a job's audits
POLL_S = 0.5
CLOCK_SLACK_S = 2.0  # wall-clock margin before a deadline counts as passed when no block says so
MAX_SPANS = 4  # spans kept loaded for checking
TRIES = 4  # a commit, reveal or resolve refused is sent again, backing off from RETRY_S
RETRY_S = 1.0
RECHECK_S = 2.0  # an audit whose evidence was not found, or that this node could not check, is tried again
COMMIT_MARGIN_S = 3.0  # ...while there is time: the last check ends this long before the commit deadline
MISSING_AFTER_S = 5.0  # evidence is judged missing only after being looked for this long


def commitment(audit_id: int, member: str, vote: Vote, salt: bytes) -> bytes:
    """What a member commits: keccak256(abi.encode(auditId, member, vote, salt)), as the Verifier."""
    return bytes(keccak(encode(["uint256", "address", "uint8", "bytes32"], [audit_id, member, int(vote), salt])))


class Committee:
    def __init__(
        self,
        account: LocalAccount,
        chain: Chain,
        contracts: Contracts,
        ledger: Ledger,
        executor: Executor,
        misbehave: Misbehaviour,
        state: AgentState,
        job_keys: JobKeys,
    ):
        self.account = account
        self.address = account.address
        self.chain = chain
        self.c = contracts
        self.ledger = ledger
        self.executor = executor
        self.misbehave = misbehave
        self.spans: SpanCache = {}
        self.verdicts: dict[int, Verdict] = {}  # audit -> this node's verdict (for logs and tests)
        self.state = state  # votes are saved before they are committed
        self.job_keys = job_keys  # a private job's key, asked of its route's nodes
        self.serving: set[int] = set()  # audits being served now (a restart's resume never doubles one)

    async def _send(self, what: str, fn: Any, *args: Any) -> dict[str, Any] | None:
        return await send_logged(log, what, fn, *args, account=self.account)

    async def _past(self, deadline: int) -> bool:
        """Whether the chain's clock has passed `deadline` (`Chain.past`: by the latest block, or
        by this machine's clock shifted to the chain's when the chain is idle). Chain reads wait
        for a chain that does not answer (`read_waiting`): an audit's steps wait out a restart
        rather than end (a member that never reveals is recorded absent)."""
        return bool(await read_waiting(log, self.chain.past, deadline, CLOCK_SLACK_S))

    # ------------------------------------------------------------------ opening audits
    async def open_audits(self, job_id: int, result_block: int) -> None:
        """If the job's result was drawn for audit, open its committees (unless another node does
        first: each waits its turn, in an order that depends on the job)."""
        job = self.ledger.jobs.get(job_id)
        if job is None or job.coordinator is None or not job.route:
            return
        if not job.audit_bps:
            return
        block = await read_waiting(log, self.chain.w3.eth.get_block, result_block)
        mask = audited_stages(bytes(block["hash"]), job_id, len(job.route), job.audit_bps)
        if not mask:
            return
        nodes = sorted(self.ledger.nodes, key=lambda a: keccak(text=f"{job_id}:{a}"))
        turn = nodes.index(self.address) if self.address in nodes else len(nodes)
        await asyncio.sleep(turn * TURN_S)
        if any(name == "AuditDrawn" for _, name in self.ledger.jobs[job_id].history):
            return
        log.info("job %d: stages %s drawn for audit; opening", job_id, bin(mask)[2:][::-1], extra={"job": job_id})
        draw = partial(self.c.market.draw_audits, gas=DRAW_GAS)
        await self._send(f"drawAudits({job_id})", draw, job_id, job.coordinator, job.route)

    # ------------------------------------------------------------------ serving on a committee
    async def serve(self, audit_id: int) -> None:
        """Check the audited stage, commit, reveal, resolve. Each step is retried while it can
        still count (a transaction refused by a busy RPC, a clock read early), and the vote is
        saved before it is committed, so a node restarted mid-audit picks up where it was."""
        audit = self.ledger.audits[audit_id]
        if audit_id in self.serving or audit.resolved:
            return
        self.serving.add(audit_id)
        try:
            sealed = await self._commit(audit_id)
            if sealed is not None and self.misbehave != "absent":
                await self._reveal(audit_id, *sealed)
            await self._resolve(audit_id)
        finally:
            self.serving.discard(audit_id)
            if self.ledger.audits[audit_id].resolved:  # (else a restart still holds the vote)
                self.state.unseal(audit_id)

    def unresolved(self) -> list[int]:
        """The open audits this node sits on (after a restart it serves them again)."""
        return [i for i, a in self.ledger.audits.items() if self.address in a.members and not a.resolved]

    async def _commit(self, audit_id: int) -> tuple[Vote, bytes] | None:
        """This node's vote and salt, committed now or before a restart (None: none committed)."""
        audit = self.ledger.audits[audit_id]
        if self.address in audit.committed:
            saved = self.state.sealed.get(audit_id)
            if saved is None:
                log.warning("audit %d: committed before a restart that lost the vote; it cannot be revealed", audit_id)
                return None
            return Vote(saved[0]), bytes.fromhex(saved[1])
        if await self._past(audit.commit_deadline):
            return None
        job_key = None
        if self._private(audit.job_id):
            job_key = await self.job_keys.fetch_for_audit(audit.job_id, audit_id)
        verdict = await self._verdict(audit_id, job_key)
        if verdict is None:
            return None
        self.verdicts[audit_id] = verdict
        vote = Vote.CORRECT if verdict.honest else Vote.WRONG
        if self.misbehave == "lie_vote":
            vote = Vote.WRONG if vote == Vote.CORRECT else Vote.CORRECT
        log.info(
            "audit %d (job %d stage %d): voting %s%s",
            audit_id,
            audit.job_id,
            audit.stage,
            vote.name.lower(),
            f" ({verdict.reason})" if verdict.reason else "",
            extra={"job": audit.job_id},
        )
        salt = os.urandom(32)
        self.state.seal(audit_id, int(vote), salt)
        sealed = commitment(audit_id, self.address, vote, salt)
        for attempt in range(TRIES):
            if await self._send(f"commit(audit {audit_id})", self.c.verifier.commit, audit_id, sealed) is not None:
                if self.misbehave == "exit_after_commit":
                    log.warning("audit %d: committed; exiting now (misbehave=exit_after_commit)", audit_id)
                    os._exit(3)
                return vote, salt
            await asyncio.sleep(RETRY_S * 2**attempt)
            if self.address in audit.committed:
                return vote, salt
            if await self._past(audit.commit_deadline):
                break
        return None

    async def _verdict(self, audit_id: int, job_key: bytes | None) -> Verdict | None:
        """Check the audited stage. Evidence not found on IPFS yet, or a check this node could not
        make (its own IPFS daemon not answering, the model's blocks out of reach), is tried again
        every RECHECK_S while the commit period leaves time: the audited node may be restarting
        (it stores its transcripts again), and a member's own outage is no evidence against the
        stage. When time is up, evidence still missing is a dishonest claim (the stage owes it),
        and a check never made is no vote (None); so is missing evidence looked for less than
        MISSING_AFTER_S (a member serving the audit late, after a restart of its own)."""
        audit = self.ledger.audits[audit_id]
        started = time.monotonic()
        while True:
            left = await self._left(audit.commit_deadline)
            try:
                verdict = await asyncio.to_thread(self._check, audit.job_id, audit.stage, job_key, max(1.0, left))
                if not verdict.missing:
                    return verdict
                why: str = verdict.reason
            except ShardnetError as exc:
                verdict, why = None, f"this node could not check it: {exc}"
            if await self._left(audit.commit_deadline) < RECHECK_S:
                tried = time.monotonic() - started
                if verdict is not None and tried < MISSING_AFTER_S:
                    why, verdict = f"{why} (looked for {tried:.1f} s only)", None
                if verdict is None:
                    log.warning("audit %d: %s; the commit period is over: not voting", audit_id, why)
                return verdict
            log.info("audit %d: %s; checking again in %.0f s", audit_id, why, RECHECK_S, extra={"job": audit.job_id})
            await asyncio.sleep(RECHECK_S)

    async def _left(self, deadline: int) -> float:
        """Seconds left, by the chain's clock, before COMMIT_MARGIN_S ahead of `deadline`."""
        _, now = await read_waiting(log, self.chain.clock)
        return float(deadline - COMMIT_MARGIN_S - now)

    async def _reveal(self, audit_id: int, vote: Vote, salt: bytes) -> None:
        """Reveal once every member committed, or the commit period is over (by the chain's clock)."""
        audit = self.ledger.audits[audit_id]
        while len(audit.committed) < len(audit.members) and not await self._past(audit.commit_deadline):
            await asyncio.sleep(POLL_S)
        reveal = partial(self.c.verifier.reveal, gas=REVEAL_GAS)
        for attempt in range(TRIES):
            if self.address in audit.votes or audit.resolved or await self._past(audit.reveal_deadline):
                return
            if await self._send(f"reveal(audit {audit_id})", reveal, audit_id, vote, salt) is not None:
                return
            await asyncio.sleep(RETRY_S * 2**attempt)

    async def _resolve(self, audit_id: int) -> None:
        """Once every member revealed, or the reveal period is over, one member resolves (usually:
        the others wait their turn, and each tries again while the audit stays open)."""
        audit = self.ledger.audits[audit_id]
        while len(audit.votes) < len(audit.members) and not await self._past(audit.reveal_deadline):
            await asyncio.sleep(POLL_S)
        await asyncio.sleep(self._turn(audit_id) * TURN_S)
        resolve = partial(self.c.verifier.resolve, gas=RESOLVE_GAS)
        for attempt in range(TRIES):
            if audit.resolved:
                return
            await self._send(f"resolve(audit {audit_id})", resolve, audit_id)
            await asyncio.sleep(RETRY_S * 2**attempt)

    def _turn(self, audit_id: int) -> int:
        members = self.ledger.audits[audit_id].members
        return members.index(self.address) if self.address in members else 0

    def _private(self, job_id: int) -> bool:
        try:
            return JobParams.decode(self.ledger.jobs[job_id].params).private
        except JobInputError:
            return False

    def _check(self, job_id: int, stage: int, job_key: bytes | None, timeout: float) -> Verdict:
        """The audited stage's verdict; IPFS reads wait at most `timeout` s for content (missing
        evidence is marked so). Raises StorageUnavailable when this node's IPFS daemon does not
        answer, and what loading the stage's span raises."""
        job = self.ledger.jobs[job_id]
        if job.status != JobStatus.COMPLETED or job.output_cid is None:
            return Verdict(False, "the job has no result to check", float("inf"), 0)
        manifest = self.ledger.models[job.model_id].manifest_cid
        timeout = min(timeout, self.executor.ipfs_timeout_s)
        try:
            raw = self.executor.ipfs.cat(job.output_cid, timeout=timeout)
            if is_sealed(raw):  # a private job's output: under the job key
                if job_key is None:
                    return Verdict(False, "the job is private and no node of its route gave its key", float("inf"), 0)
                raw = decrypt(job_key, raw, f"output:{job_id}")
            output = json.loads(raw)
        except StorageUnavailable:
            raise
        except (ShardnetError, ValueError) as exc:
            missing = isinstance(exc, ContentNotFound)
            return Verdict(False, f"the job output cannot be read: {exc}", float("inf"), 0, missing)
        if not isinstance(output, dict):
            return Verdict(False, "the job output is not a JSON object", float("inf"), 0)
        if len(self.spans) >= MAX_SPANS:
            self.spans.clear()
        started = time.perf_counter()
        verdict = check_stage(self.executor, job, manifest, output, stage, self.spans, job_key, timeout)
        log.debug("checked job %d stage %d in %.2f s", job_id, stage, time.perf_counter() - started)
        return verdict
