"""Settlement: how a job ends at this node. The last stage puts the output on IPFS (and holds it
a while for the client: node.outputs), collects every earlier stage's signed receipt, checks it
and submits the result; any stage may abort a job it cannot serve; every stage signs its receipt
for the last one.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import torch
from eth_account.signers.local import LocalAccount

from node.executor import Executor
from node.metrics import NodeMetrics
from node.misbehave import Misbehaviour
from node.outputs import RecentOutputs
from node.peers import PeerClient
from node.privacy import JobKeys
from node.reporter import Reporter
from node.runs import JobRun
from node.spool import Spool
from node.state import AgentState
from shardnet.bindings import ZERO_ADDRESS, read_waiting
from shardnet.cid import cid_v0
from shardnet.errors import ContentMismatch, PeerError, ShardnetError
from shardnet.ledger import Ledger
from shardnet.protocol import JobStatus, Receipt
from shardnet.receipts import ReceiptDomain, output_hash_of
from shardnet.sealing import encrypt
from shardnet.storage import IpfsClient
from shardnet.transcripts import Transcript

log = logging.getLogger("shardnet.node")
CLAIM_DELAY_S = 2.0  # after the deadline, before a stage claims delivery (chain time must be past it)
JOB_KEY_WAIT_S = 30.0  # a private job's stage waits this long for its client to hand over the key
POLL_S, MAX_WAIT_S = 0.5, 30.0  # waiting for a deadline: how often the chain's clock is read, at least and at most
CLAIM_TRIES = 5
SUBMIT_TRIES = 3  # a refused result is sent again this many times in all, backing off
SUBMIT_BACKOFF_S = 1.0
STORE_TRIES = 4  # a transcript's or output's IPFS write failing this many times in a row is logged as an error
STORE_RETRY_MAX_S = 30.0  # (it is tried again, backing off to this, until it is stored)
STORE_BACKOFF_S = 0.5
EARLY_SEND_WAIT_S = 0.01  # the last stage holds its final step this long at most for the receipt requests to go out


class Settlement:
    def __init__(
        self,
        account: LocalAccount,
        receipts: ReceiptDomain,
        ledger: Ledger,
        executor: Executor,
        ipfs: IpfsClient,
        peers: PeerClient,
        reporter: Reporter,
        state: AgentState,
        metrics: NodeMetrics,
        job_keys: JobKeys,
        misbehave: Misbehaviour = "",
    ):
        self.account = account
        self.receipts = receipts
        self.ledger = ledger
        self.executor = executor
        self.ipfs = ipfs
        self.peers = peers
        self.reporter = reporter
        self.chain = reporter.c.chain
        self.state = state
        self.metrics = metrics
        self.job_keys = job_keys
        self.misbehave = misbehave
        self._unstored: dict[int, dict[str, tuple[int, bytes]]] = {}  # job -> CID -> (stage, transcript)
        self.spool = Spool(state.path.parent / "unstored")  # named, not on IPFS yet: kept on disk meanwhile
        self._stored: set[asyncio.Task[None]] = set()  # transcripts and outputs being written to IPFS
        self.outputs = RecentOutputs()  # submitted lately, for their clients

    async def finalize(self, run: JobRun, final: torch.Tensor | None) -> None:
        """Last stage: every earlier stage's receipt and transcript, this stage's transcript, the
        output (listing every transcript) to IPFS, then `submitResult`."""
        job_id = run.job_id
        if job_id in self.state.submitted:
            return
        run.timing["done"] = time.time()  # the data plane's part ends here; receipts are settlement
        # every earlier stage's receipt (each with its transcript's CID), this stage's transcript
        # and the output's computed part, all at once: they are independent
        began = time.perf_counter()
        collected, own, fields = await asyncio.gather(
            self._receipts(run),
            self._publish_transcript(run),
            asyncio.to_thread(self.executor.output_fields, run, final),
        )
        receipts: list[Receipt] = [receipt for receipt, _ in collected]
        transcripts: list[str] = [transcript for _, transcript in collected] + [own]
        output = self.executor.output(run, fields, transcripts)
        if run.params.private:  # sealed under the job key: the client (and committees) read it
            output = encrypt(await self._job_key(run), output, f"output:{job_id}")
        collected_at = time.perf_counter()
        # the output's CID is computed here and its bytes written to IPFS beside submitResult,
        # not before it: a client that sees the result first has its read wait for the bytes, or
        # takes them from this node (node.outputs)
        cid = cid_v0(output)
        self._store(job_id, f"job-{job_id}-output.json", output, cid)
        self.outputs.keep(job_id, output)
        mine = self.receipts.sign(
            self.account, job_id, run.stage, run.stages[run.stage], run.coordinator, run.in_hash, output_hash_of(cid)
        )
        receipts.append(mine)
        run.final_receipt = mine
        for attempt in range(SUBMIT_TRIES):
            if await self.reporter.submit_result(job_id, run.coordinator, run.stages, cid, receipts):
                self.state.settled(job_id, "submitted")
                self.metrics.jobs.labels(run.params.kind, "completed").inc()
                log.info(
                    "job %d done: output %s (receipts and transcripts %.0f ms, output and result %.0f ms)",
                    job_id,
                    cid,
                    (collected_at - began) * 1000,
                    (time.perf_counter() - collected_at) * 1000,
                    extra={"job": job_id},
                )
                break
            job = self.ledger.jobs[job_id]
            if job.status != JobStatus.ROUTED or await self._past(job.deadline):
                break
            await asyncio.sleep(SUBMIT_BACKOFF_S * 2**attempt)  # a transient refusal (RPC, nonce) may pass
        else:
            log.warning(
                "job %d: the result was refused %d times; this stage claims its delivery once the job is overdue",
                job_id,
                SUBMIT_TRIES,
                extra={"job": job_id},
            )
            return  # the run stays, for claim_when_overdue
        if self.ledger.jobs[job_id].status == JobStatus.ABORTING:
            await self._claim(run, mine, "aborted before its result was submitted")
        self.finish(job_id)

    async def _publish_transcript(self, run: JobRun) -> str:
        """The CID of what this stage received (and, but for the last stage, sent), once per state
        of the stage. The CID is computed here (`cid_v0`, the daemon's own layout), so a receipt
        and the output name it at once; the bytes go to IPFS, pinned, once the job ends at this
        stage (`finish`: its result is in, or it settled otherwise), off the job's critical path
        and out of the way of its output's IPFS write (committees fetch them later, within the
        audit window, and a fetch that comes first waits for them)."""
        received, sent = tuple(run.received_log), () if run.is_last else tuple(run.sent_log)
        counts = (len(received), len(sent))
        if run.transcript is None or run.transcript[0] != counts:
            data = Transcript(received, sent).encode()
            if run.params.private:
                data = encrypt(await self._job_key(run), data, f"transcript:{run.job_id}:{run.stage}")
            cid = cid_v0(data)
            run.transcript = counts, cid
            if self.misbehave != "withhold":  # (a cheater names evidence it never stores)
                self.spool.keep(run.job_id, cid, _transcript_name(run.job_id, run.stage), data)  # before the CID leaves
                self._unstored.setdefault(run.job_id, {})[cid] = (run.stage, data)  # stored when the job ends here
        return run.transcript[1]

    def prepublish(self, run: JobRun) -> None:
        """A stage that sent a generation's last message names its transcript now (a private
        job's is sealed first), so the last stage's request for it finds it ready."""
        if not run.is_last and run.params.kind == "generate" and run.all_sent:
            task = asyncio.ensure_future(self._publish_transcript(run))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())  # reported when asked for

    def _store(self, job_id: int, name: str, data: bytes, cid: str) -> None:
        """Write `data` to IPFS in the background; spooled on disk until it is written (a node
        killed before then stores it when it starts again: `store_spooled`)."""
        self.spool.keep(job_id, cid, name, data)
        task = asyncio.ensure_future(self._store_now(job_id, name, data, cid))
        self._stored.add(task)
        task.add_done_callback(self._stored.discard)

    async def drain(self, timeout_s: float) -> None:
        """Let the IPFS writes under way finish (at shutdown: a result on-chain keeps its output)."""
        if self._stored:
            await asyncio.wait(set(self._stored), timeout=timeout_s)

    async def _store_now(self, job_id: int, name: str, data: bytes, cid: str) -> None:
        """Put a transcript or output on IPFS (pinned) under the CID already named on-chain or in
        a receipt: tried until it is there (the IPFS daemon may be restarting), backing off to
        STORE_RETRY_MAX_S; it stays spooled on disk meanwhile."""
        attempt = 0
        while True:
            try:
                await asyncio.to_thread(self.ipfs.add, data, name, cid=cid)
            except ContentMismatch as exc:  # the daemon stores it under another CID: its settings, not chance
                log.error("job %d: %s cannot be stored as %s: %s", job_id, name, cid, exc, extra={"job": job_id})
                return
            except ShardnetError as exc:
                delay = min(STORE_BACKOFF_S * 2**attempt, STORE_RETRY_MAX_S)
                level = logging.ERROR if attempt + 1 == STORE_TRIES else logging.WARNING
                log.log(level, "job %d: storing %s failed (%s); trying again in %.1f s", job_id, name, exc, delay)
                attempt += 1
                await asyncio.sleep(delay)
                continue
            self.spool.done(job_id, cid, name)
            return

    def store_spooled(self) -> int:
        """At start-up: store what a previous run named but did not get onto IPFS (in the
        background); returns how many."""
        pending = self.spool.pending()
        for job_id, cid, name, data in pending:
            self._store(job_id, name, data, cid)
        if pending:
            log.info("storing %d transcripts and outputs a previous run left unstored", len(pending))
        return len(pending)

    async def _job_key(self, run: JobRun) -> bytes:
        """A private job's key (its client hands it to every node of the route once routed)."""
        key = await self.job_keys.wait_for(run.job_id, JOB_KEY_WAIT_S)
        if key is None:
            raise PeerError(f"job {run.job_id} is private and its client never handed this node the job key")
        return key

    async def collect_early(self, run: JobRun) -> None:
        """Last stage, as its final step begins: every earlier stage has sent all it will, so its
        receipt is final; ask for them now, and they come while this stage computes. Returns once
        the requests are written out (at most EARLY_SEND_WAIT_S): the step's compute holds the
        event loop, and a request still in the HTTP client then would go out only after it,
        leaving the output waiting for the answers (GPT-2-small, 3 stages: 7.7 -> 2.1 ms)."""
        if run.early_receipts is None and len(run.stages) > 1:
            sent = [asyncio.Event() for _ in range(len(run.stages) - 1)]
            asked = asyncio.ensure_future(self._ask_receipts(run, sent))
            asked.add_done_callback(lambda t: t.cancelled() or t.exception())
            run.early_receipts = list(run.stages), asked
            waiting = asyncio.gather(*(s.wait() for s in sent))
            try:
                await asyncio.wait_for(waiting, EARLY_SEND_WAIT_S)
            except TimeoutError:
                pass  # (they go out when they can; the answers are waited for at the end)

    async def _receipts(self, run: JobRun) -> list[tuple[Receipt, str]]:
        """The earlier stages' receipts with their transcripts' CIDs: those asked for early if they
        chain up to what this stage received over the same route, else asked for now."""
        if run.early_receipts is not None and run.early_receipts[0] == run.stages:
            try:
                early = await run.early_receipts[1]
            except Exception:  # noqa: BLE001 - asked for again below, where a failure counts
                early = []
            hashes = [r.input_hash for r, _ in early[1:]] + [run.in_hash]
            if early and all(r.output_hash == h for (r, _), h in zip(early, hashes, strict=True)):
                return early
        return await self._ask_receipts(run)

    async def _ask_receipts(self, run: JobRun, sent: list[asyncio.Event] | None = None) -> list[tuple[Receipt, str]]:
        """Every earlier stage's receipt; `sent[s]` is set once the request to stage s is written."""
        stages = range(len(run.stages) - 1)
        return list(await asyncio.gather(*(self._collect_receipt(run, s, sent[s] if sent else None) for s in stages)))

    async def _collect_receipt(self, run: JobRun, stage: int, sent: asyncio.Event | None = None) -> tuple[Receipt, str]:
        node = run.stages[stage].node
        path = f"/v1/jobs/{run.job_id}/receipt"
        response = await self.peers.post(self.ledger.endpoints[node], path, b"{}", sent)
        data = response.json()
        receipt = Receipt(
            bytes.fromhex(data["input_hash"][2:]),
            bytes.fromhex(data["output_hash"][2:]),
            bytes.fromhex(data["signature"][2:]),
        )
        signer = self.receipts.signer(run.job_id, stage, run.stages[stage], run.coordinator, receipt)
        if signer != node:
            raise PeerError(f"stage {stage} returned a receipt signed by {signer}, not {node}")
        transcript = data.get("transcript")
        if not isinstance(transcript, str) or not transcript:
            raise PeerError(f"stage {stage} returned no transcript CID with its receipt")
        return receipt, transcript

    async def receipt_for(self, job_id: int, sender: str) -> tuple[dict[str, Any] | None, str]:
        """This stage's signed receipt and its transcript's CID, for the job's last stage only."""
        job = self.ledger.jobs.get(job_id)
        run = self.executor.jobs.get(job_id)
        if job is None or run is None:
            return None, f"this node has no state for job {job_id}"
        if sender != job.route[-1].node:
            return None, "receipts go only to the job's last stage"
        if self.misbehave == "abort_late" and run.is_first:
            await self.abort(job_id, "input is malformed")  # a lie: the work is done
            return None, "this stage aborted the job"
        receipt = self._own_receipt(run)
        try:
            transcript = await self._publish_transcript(run)
        except PeerError as exc:
            return None, str(exc)
        self.metrics.jobs.labels(run.params.kind, "served").inc()
        return {
            "stage": run.stage,
            "transcript": transcript,
            "input_hash": "0x" + receipt.input_hash.hex(),
            "output_hash": "0x" + receipt.output_hash.hex(),
            "signature": "0x" + receipt.signature.hex(),
        }, ""

    async def abort(self, job_id: int, reason: str) -> None:
        """Give up on a job this node cannot serve, with the reason: the client is refunded for
        every stage that did not deliver."""
        if job_id in self.state.aborted:
            return
        job = self.ledger.jobs[job_id]
        if job.route and job.route[0].node != self.account.address:
            # only the first stage (or the coordinator) may abort a routed job: this one will
            # expire, and the stages that delivered claim their fee
            log.warning("job %d: %s; it will expire (only stage 0 may abort)", job_id, reason, extra={"job": job_id})
            return
        if await self._past(job.deadline):  # past the deadline a job settles by expiry: keep the run to claim
            log.warning("job %d: %s; past its deadline, so it will expire", job_id, reason, extra={"job": job_id})
            return
        log.warning("aborting job %d: %s", job_id, reason, extra={"job": job_id})
        aborted = await self.reporter.abort_job(job_id, job.coordinator or ZERO_ADDRESS, job.route, reason)
        if aborted:
            self.state.settled(job_id, "aborted")
        self.metrics.jobs.labels("unknown", "aborted").inc()
        run = self.executor.jobs.get(job_id)
        if not aborted or run is None or not run.sent_log:
            self.finish(job_id)
        # else: it sent activations on before giving up, so it claims them like the later stages
        # do once the abort is seen (ClaimAborted)

    async def claim_when_overdue(self, job_id: int) -> None:
        """If a job this stage worked on is still routed past its deadline, prove the stage
        delivered (its own receipt) so the expiry pays it instead of blaming it. The last stage
        delivers by submitting the result; it claims only when that was refused."""
        job = self.ledger.jobs[job_id]
        while not await self._past(job.deadline, CLAIM_DELAY_S):
            _, now = await read_waiting(log, self.chain.clock)
            await asyncio.sleep(min(MAX_WAIT_S, max(POLL_S, job.deadline - now)))
        for _ in range(CLAIM_TRIES):
            job = self.ledger.jobs[job_id]
            run = self.executor.jobs.get(job_id)
            if job.status != JobStatus.ROUTED or run is None:
                return
            receipt = self._delivery_receipt(run)
            if receipt is None:
                return
            if await self.reporter.claim_delivery(job_id, run.coordinator, run.stages, run.stage, receipt):
                log.info("job %d is overdue: claimed delivery of stage %d", job_id, run.stage, extra={"job": job_id})
                return
            await asyncio.sleep(CLAIM_DELAY_S)  # the chain's clock may lag this one by a block

    async def _past(self, deadline: int, slack_s: float = 0.0) -> bool:
        """Whether the chain's clock has passed `deadline` (see `Chain.past`); waits for a chain
        that does not answer (a claim waiting out a deadline must outlive a chain restart)."""
        return bool(await read_waiting(log, self.chain.past, deadline, slack_s))

    async def claim_aborted(self, job_id: int) -> None:
        """A job this stage worked on was aborted: if the stage delivered (sent activations on, or,
        as the last stage, made the output), claim it, so the abort does not take its fee."""
        run = self.executor.jobs.get(job_id)
        receipt = self._delivery_receipt(run) if run is not None else None
        if run is not None and receipt is not None:
            await self._claim(run, receipt, "aborted")
        self.finish(job_id)

    def contest_replacement(self, job_id: int) -> Coroutine[Any, Any, None] | None:
        """A reroute took this node off a job it is running, and recorded it failed. Unless its own
        sends were failing (then the reroute was right), it is live and proves it: the returned
        coroutine sends its receipt for its stage of the old route (the run still holds that
        route; it is signed now, before the job is dropped), which strikes off the failure and
        fines the coordinator."""
        run = self.executor.jobs.get(job_id)
        if run is None or run.ended or run.stalled:
            return None
        stage, old_stage, receipt = run.stage, run.stages[run.stage], self._own_receipt(run)

        async def contest() -> None:
            if await self.reporter.contest_replacement(job_id, stage, old_stage, receipt):
                log.warning(
                    "job %d: rerouted away while live; contested, the coordinator was fined",
                    job_id,
                    extra={"job": job_id},
                )

        return contest()

    def _own_receipt(self, run: JobRun) -> Receipt:
        """This stage's receipt over what entered and left it so far."""
        return self.receipts.sign(
            self.account, run.job_id, run.stage, run.stages[run.stage], run.coordinator, run.in_hash, run.out_hash
        )

    def _delivery_receipt(self, run: JobRun) -> Receipt | None:
        """The receipt that proves this stage delivered, or None if it did not: a stage that sent
        activations on, or a last stage that made the output (its receipt for the output)."""
        if run.is_last and run.final_receipt is not None:
            return run.final_receipt
        if run.sent_log or run.is_last and "done" in run.timing:
            return self._own_receipt(run)
        return None

    async def _claim(self, run: JobRun, receipt: Receipt, why: str) -> None:
        job_id = run.job_id
        if await self.reporter.claim_delivery(job_id, run.coordinator, run.stages, run.stage, receipt):
            log.info("job %d was %s: claimed delivery of stage %d", job_id, why, run.stage, extra={"job": job_id})

    def finish(self, job_id: int) -> None:
        for cid, (stage, data) in self._unstored.pop(job_id, {}).items():
            self._store(job_id, _transcript_name(job_id, stage), data, cid)
        run = self.executor.jobs.get(job_id)
        if run is not None:
            run.ended = True
            run.progress.set()  # a token stream still open ends
        if self.executor.end(job_id):
            self.metrics.open_jobs.dec()


def _transcript_name(job_id: int, stage: int) -> str:
    return f"job-{job_id}-stage-{stage}-transcript"
