"""The node agent: listener -> filter -> executor -> reporter, wired in one place.

Long-lived tasks: the event listener (from the saved position), the data-plane server, and
one worker per running job. Model math runs in threads so the event loop stays responsive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import torch
import uvicorn
from eth_account import Account
from eth_account.messages import encode_typed_data

from node.executor import Executor, JobRun, fold
from node.filter import my_stage
from node.messages import pack, unpack
from node.metrics import NodeMetrics
from node.peers import PeerClient, PeerError
from node.reporter import Reporter
from node.server import create_app
from node.settings import NodeSettings
from shardnet.bindings import RECEIPT_TYPES, Contracts, output_hash_of, receipt_domain, sign_receipt
from shardnet.chain import Chain
from shardnet.deployment import Deployment
from shardnet.errors import ShardnetError, StorageError
from shardnet.events import Event
from shardnet.jobs import JobInputError, JobParams
from shardnet.ledger import Ledger
from shardnet.listener import Listener
from shardnet.model.quant import decode_activation, encode_activation
from shardnet.protocol import Hardware, JobStatus, Receipt, Span, Stage
from shardnet.storage import IpfsClient

# Decode steps expected to take at most this long run on the event loop itself. Handing a
# forward to a worker thread and back costs milliseconds of GIL handoff per hop (Python's
# switch interval is 5 ms), which dominated the per-token cost across stages; longer steps
# still go to a thread so the data plane and health probes keep answering.
INLINE_STEP_MS = 50.0
log = logging.getLogger("shardnet.node")
SETTLED = ("ResultSubmitted", "JobExpired", "JobAborted", "JobCancelled")


class NodeAgent:
    def __init__(self, settings: NodeSettings):
        self.settings = settings
        self.account = settings.account()
        self.address = self.account.address
        self.deployment = Deployment.load(settings.deployment)
        self.chain = Chain.from_deployment(self.deployment, account=self.account)
        self.contracts = Contracts(self.chain)
        self.ipfs = IpfsClient(self.deployment.ipfs_api, timeout=settings.ipfs_timeout_s)
        self.executor = Executor(self.ipfs, settings.ipfs_timeout_s, settings.slowdown)
        self.reporter = Reporter(self.contracts, self.account)
        self.peers = PeerClient(self.account, settings.peer_timeout_s, settings.peer_retries)
        self.metrics = NodeMetrics()
        self.ledger = Ledger()
        self.queues: dict[int, asyncio.Queue] = {}
        self.loading: set[int] = set()  # models whose span is being fetched
        self.tasks: set[asyncio.Task] = set()
        self.state_path = Path(settings.state_dir) / "state.json"
        self.state = self._load_state()
        self.listener = Listener(
            self.chain,
            list(self.deployment.contracts[n].address for n in ("NodeRegistry", "ModelRegistry", "JobMarket")),
            self.deployment.ws_url,
            settings.poll_interval_s,
        )
        self.started_at = time.time()
        self.ready = False

    # ------------------------------------------------------------------ state
    def _load_state(self) -> dict:
        """The saved position and settled jobs, if they belong to this deployment (a state folder
        reused against another chain or redeployed contracts starts over)."""
        identity = f"{self.deployment.chain_id}:{self.deployment.address('JobMarket')}:{self.deployment.deploy_block}"
        if self.state_path.exists():
            state = json.loads(self.state_path.read_text())
            if state.get("deployment") == identity:
                state["last"] = tuple(state["last"])
                return state
            log.warning("state in %s is for another deployment; starting over", self.state_path)
        return {"deployment": identity, "last": (-1, -1), "submitted": [], "aborted": []}

    def _save_state(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({**self.state, "last": list(self.state["last"])}))
        tmp.replace(self.state_path)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    # ------------------------------------------------------------------ main
    async def run(self) -> None:
        torch.set_num_threads(self.settings.torch_threads)
        hw = self.settings.hardware
        registered = await self.reporter.ensure_registered(
            self.settings.url, Hardware(hw.memory_mb, hw.compute_score, hw.bandwidth_mbps), self.settings.stake_wei
        )
        log.info(
            "node %s %s, serving %s",
            self.address,
            "registered" if registered else "already registered",
            self.settings.url,
        )
        server = uvicorn.Server(
            uvicorn.Config(
                create_app(self), host=self.settings.listen_host, port=self.settings.listen_port, log_level="warning"
            )
        )
        server_task = asyncio.create_task(server.serve())
        follow_task = asyncio.create_task(self._follow())
        try:  # the server stops on SIGTERM / SIGINT (uvicorn handles them); then everything stops
            await asyncio.wait({server_task, follow_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            server.should_exit = True
            follow_task.cancel()
            for task in list(self.tasks):
                task.cancel()
            await asyncio.gather(follow_task, server_task, return_exceptions=True)
            await self.peers.close()
            log.info("node stopped")

    async def _follow(self) -> None:
        # catch up: rebuild the view from the deployment block, act only past the saved position
        async for event in self.listener.catch_up(self.deployment.deploy_block):
            await self._on_event(event)
        await self._reconcile_spans()
        self.ready = True
        log.info("caught up at block %d", self.listener.last_key[0])
        async for event in self.listener.stream(self.listener.last_key[0] + 1):
            await self._on_event(event)

    async def _on_event(self, event: Event) -> None:
        self.ledger.apply(event)
        if event.key <= self.state["last"]:
            return  # handled before a restart: never act twice
        try:
            self._handle(event)
        except Exception:
            log.exception("could not handle %s at block %d", event.name, event.block_number)
        self.state["last"] = event.key
        self._save_state()

    # ------------------------------------------------------------------ filter
    def _handle(self, event: Event) -> None:
        a = event.args
        if event.name == "ShardAssigned" and a["node"] == self.address:
            self._spawn(self._load_span(a["modelId"], Span(a["start"], a["end"])))
        elif event.name == "ShardReleased" and a["node"] == self.address:
            self.executor.unload(a["modelId"])
        elif event.name in ("JobRouted", "JobRerouted"):
            job = self.ledger.jobs[a["jobId"]]
            stage = my_stage(self.address, job.route)
            run = self.executor.jobs.get(a["jobId"])
            if stage is None:
                self._finish(a["jobId"])
            elif event.name == "JobRerouted" and run is not None:
                self._spawn(self._rerouted(run, job))
            elif event.name == "JobRouted" and stage == 0:
                log.info("picked up job %d as stage 0", a["jobId"], extra={"job": a["jobId"]})
                self._spawn(self._start_job(a["jobId"], picked_up_at=time.time()))
        elif event.name in SETTLED:
            self._finish(a["jobId"])
            self.queues.pop(a["jobId"], None)

    async def _reconcile_spans(self) -> None:
        for model_id, nodes in self.ledger.assignments.items():
            if self.address in nodes and model_id not in self.executor.spans and model_id not in self.loading:
                start, end, _ = nodes[self.address]
                await self._load_span(model_id, Span(start, end))

    async def _load_span(self, model_id: int, span: Span) -> None:
        manifest_cid = self.ledger.models[model_id]["manifestCid"]
        self.loading.add(model_id)
        try:
            await asyncio.to_thread(self.executor.load, model_id, manifest_cid, span)
        except ShardnetError as exc:
            log.error("could not load blocks [%d, %d) of model %d: %s", span.start, span.end, model_id, exc)
            return
        finally:
            self.loading.discard(model_id)
        log.info("loaded and verified blocks [%d, %d) of model %d", span.start, span.end, model_id)
        assignment = self.ledger.assignments.get(model_id, {}).get(self.address)
        if assignment and not assignment[2]:
            await self.reporter.confirm_shard(model_id)

    # ------------------------------------------------------------------ jobs
    def _route(self, job_id: int) -> tuple[list[Stage], str]:
        job = self.ledger.jobs[job_id]
        return [Stage(*s) for s in job.route], job.coordinator

    def _endpoint(self, node: str) -> str:
        return self.ledger.endpoints[node]

    async def _abort(self, job_id: int, reason: str) -> None:
        if job_id in self.state["aborted"]:
            return
        stages, coordinator = self._route(job_id)
        log.warning("aborting job %d: %s", job_id, reason, extra={"job": job_id})
        if await self.reporter.abort_job(job_id, coordinator, stages, reason):
            self.state["aborted"].append(job_id)
            self._save_state()
        self.metrics.jobs.labels("unknown", "aborted").inc()
        self._finish(job_id)

    def _begin(self, job_id: int) -> JobRun:
        run = self.executor.jobs.get(job_id)
        if run is None:
            job = self.ledger.jobs[job_id]
            stages, coordinator = self._route(job_id)
            params = JobParams.decode(job.params)
            run = self.executor.begin(
                job_id, job.model_id, my_stage(self.address, job.route), stages, coordinator, params
            )
            self.metrics.open_jobs.inc()
        return run

    async def _start_job(self, job_id: int, picked_up_at: float) -> None:
        job = self.ledger.jobs[job_id]
        if job.model_id not in self.executor.spans:
            await self._abort(job_id, f"stage 0 does not hold model {job.model_id}")
            return
        try:
            params = JobParams.decode(job.params)
            raw = await asyncio.to_thread(self.ipfs.cat, job.input_cid, self.settings.ipfs_timeout_s)
            run = self._begin(job_id)
            ids, mask = self.executor.first_input(run, raw)
        except JobInputError as exc:
            await self._abort(job_id, str(exc))
            return
        except StorageError as exc:
            await self._abort(job_id, f"input {job.input_cid} could not be read from IPFS: {exc}")
            return
        run.attention_mask = mask
        run.prompt_len = ids.shape[1]
        run.timing = {"picked_up_at": picked_up_at, "t0": time.time()}
        await self._step(run, ids, mask, params)

    async def _step(self, run: JobRun, x: torch.Tensor, mask, params: JobParams) -> None:
        started = time.perf_counter()
        if x.shape[1] == 1 and self.executor.step_estimate_ms(run) <= INLINE_STEP_MS:
            out = self.executor.run_span(run, x, mask)  # a short decode step: no thread handoff
        else:
            out = await asyncio.to_thread(self.executor.run_span, run, x, mask)
        self.metrics.stage_seconds.labels(params.kind).observe(time.perf_counter() - started)
        if not run.is_last:
            header = {"kind": "act", "step": run.step, "timing": run.timing}
            if mask is not None:
                header["mask"] = mask.tolist()
            body = pack(header, encode_activation(out, params.wire))
            run.out_hash = fold(run.out_hash, body)
            run.step += 1
            run.sent_log.append(body)
            if not run.stalled:
                await self._send(run, run.stage + 1, body)
            return
        if params.kind == "generate":
            token, done = self.executor.next_token(run, out)
            if not done:
                body = pack({"kind": "tokens", "step": run.step, "ids": [token]})
                run.step += 1
                if run.is_first:  # a one-stage route loops locally
                    run.in_hash = fold(run.in_hash, body)
                    await self._step(run, torch.tensor([[token]]), None, params)
                else:
                    await self._send(run, 0, body)
                return
            out = None
        await self._finalize(run, out)

    async def _send(self, run: JobRun, stage: int, body: bytes) -> None:
        node = run.stages[stage].node
        try:
            await self.peers.post(self._endpoint(node), f"/v1/jobs/{run.job_id}/stages/{stage}", body)
            self.metrics.bytes_out.inc(len(body))
        except PeerError as exc:
            log.error("job %d: stage %d unreachable: %s", run.job_id, stage, exc, extra={"job": run.job_id})
            if run.stages[stage].node != node:
                return  # rerouted meanwhile: the replay to the replacement carries this message
            if stage == run.stage + 1:
                # the coordinator replaces a dead stage (rerouteJob); replay to the replacement then
                run.stalled = True
                self._spawn(self._await_reroute(run, node))
            else:
                await self._abort(run.job_id, f"stage {stage} ({node}) unreachable: {exc}")

    async def _await_reroute(self, run: JobRun, dead: str) -> None:
        await asyncio.sleep(self.settings.reroute_wait_s)
        if run.stalled and self.executor.jobs.get(run.job_id) is run and run.stages[run.stage + 1].node == dead:
            await self._abort(
                run.job_id,
                f"stage {run.stage + 1} ({dead}) unreachable and not replaced within "
                f"{self.settings.reroute_wait_s:.0f} s",
            )

    async def _rerouted(self, run: JobRun, job) -> None:
        """The route changed under a running job: adopt it, and if the next stage is new, replay
        everything this stage sent so the replacement rebuilds its KV cache (Petals' trick)."""
        old_next = run.stages[run.stage + 1].node if not run.is_last else None
        run.stages, run.coordinator = [Stage(*s) for s in job.route], job.coordinator
        run.stage = my_stage(self.address, job.route)
        if run.is_last or run.stages[run.stage + 1].node == old_next and not run.stalled:
            return
        log.info(
            "job %d: replaying %d messages to the new stage %d",
            run.job_id,
            len(run.sent_log),
            run.stage + 1,
            extra={"job": run.job_id},
        )
        run.stalled = False
        for body in list(run.sent_log):
            await self._send(run, run.stage + 1, body)
            if run.stalled:
                return

    async def accept(self, job_id: int, stage: int, sender: str, body: bytes) -> tuple[bool, str]:
        """A data-plane message arrived: accept it only from the stage the on-chain route names."""
        for _ in range(30):  # the JobRouted event may still be on its way (~10 ms)
            job = self.ledger.jobs.get(job_id)
            if job is not None and job.route:
                break
            await asyncio.sleep(0.1)
        else:
            return False, f"job {job_id} has no route on-chain"
        if job.status != JobStatus.ROUTED:
            return False, f"job {job_id} is {job.status.name.lower()}, not routed"
        mine = my_stage(self.address, job.route)
        if mine != stage:
            return False, f"this node is not stage {stage} of job {job_id}"
        try:
            header, _ = unpack(body)
        except ValueError as exc:
            return False, f"malformed message: {exc}"
        last = len(job.route) - 1
        expected = job.route[last][0] if header.get("kind") == "tokens" else job.route[stage - 1][0] if stage else None
        if expected is None or sender != expected:
            return False, f"job {job_id} stage {stage} takes messages only from {expected}"
        self.metrics.bytes_in.inc(len(body))
        queue = self.queues.get(job_id)
        if queue is None:
            queue = self.queues[job_id] = asyncio.Queue()
            self._spawn(self._worker(job_id, queue))
        await queue.put(body)
        return True, ""

    async def _worker(self, job_id: int, queue: asyncio.Queue) -> None:
        while True:
            body = await queue.get()
            try:
                run = self._begin(job_id)
                header, payload = unpack(body)
                if header["kind"] == "act":
                    if header["step"] < run.expected_step:
                        continue  # a replay after failover: already processed here
                    run.expected_step = header["step"] + 1
                run.in_hash = fold(run.in_hash, body)
                params = run.params
                if header["kind"] == "tokens":
                    await self._step(run, torch.tensor([header["ids"]]), None, params)
                else:
                    mask = torch.tensor(header["mask"]) if "mask" in header else None
                    run.timing = header.get("timing", run.timing)
                    await self._step(run, decode_activation(payload), mask, params)
            except Exception as exc:
                log.exception("job %d failed at this stage", job_id, extra={"job": job_id})
                await self._abort(job_id, f"stage failed: {type(exc).__name__}: {exc}")
                return
            if job_id not in self.executor.jobs:
                return

    # ------------------------------------------------------------------ settlement
    async def _finalize(self, run: JobRun, final) -> None:
        job_id = run.job_id
        if job_id in self.state["submitted"]:
            return
        output = self.executor.output(run, final)
        cid = await asyncio.to_thread(self.ipfs.add, output, f"job-{job_id}-output.json")
        mine = sign_receipt(
            self.account,
            self.chain.chain_id,
            self.contracts.market.address,
            job_id,
            run.stage,
            run.stages[run.stage].start,
            run.stages[run.stage].end,
            run.in_hash,
            output_hash_of(cid),
        )
        receipts = []
        for stage in range(len(run.stages) - 1):
            receipts.append(await self._collect_receipt(run, stage))
        receipts.append(mine)
        if await self.reporter.submit_result(job_id, run.coordinator, run.stages, cid, receipts):
            self.state["submitted"].append(job_id)
            self._save_state()
            self.metrics.jobs.labels(run.params.kind, "completed").inc()
            log.info("job %d done: output %s", job_id, cid, extra={"job": job_id})
        self._finish(job_id)

    async def _collect_receipt(self, run: JobRun, stage: int) -> Receipt:
        node = run.stages[stage].node
        response = await self.peers.post(self._endpoint(node), f"/v1/jobs/{run.job_id}/receipt", b"{}")
        data = response.json()
        receipt = Receipt(
            bytes.fromhex(data["input_hash"][2:]),
            bytes.fromhex(data["output_hash"][2:]),
            bytes.fromhex(data["signature"][2:]),
        )
        s = run.stages[stage]
        message = {
            "jobId": run.job_id,
            "stage": stage,
            "start": s.start,
            "end": s.end,
            "inputHash": receipt.input_hash,
            "outputHash": receipt.output_hash,
        }
        signer = Account.recover_message(
            encode_typed_data(
                receipt_domain(self.chain.chain_id, self.contracts.market.address), RECEIPT_TYPES, message
            ),
            signature=receipt.signature,
        )
        if signer != node:
            raise PeerError(f"stage {stage} returned a receipt signed by {signer}, not {node}")
        return receipt

    async def receipt_for(self, job_id: int, sender: str) -> tuple[dict | None, str]:
        job = self.ledger.jobs.get(job_id)
        run = self.executor.jobs.get(job_id)
        if job is None or run is None:
            return None, f"this node has no state for job {job_id}"
        if sender != job.route[-1][0]:
            return None, "receipts go only to the job's last stage"
        s = run.stages[run.stage]
        receipt = sign_receipt(
            self.account,
            self.chain.chain_id,
            self.contracts.market.address,
            job_id,
            run.stage,
            s.start,
            s.end,
            run.in_hash,
            run.out_hash,
        )
        self.metrics.jobs.labels(run.params.kind, "served").inc()
        return {
            "stage": run.stage,
            "input_hash": "0x" + receipt.input_hash.hex(),
            "output_hash": "0x" + receipt.output_hash.hex(),
            "signature": "0x" + receipt.signature.hex(),
        }, ""

    def _finish(self, job_id: int) -> None:
        if self.executor.jobs.pop(job_id, None) is not None:
            self.metrics.open_jobs.dec()

    def health(self) -> dict:
        return {
            "node": self.address,
            "ready": self.ready,
            "listener": self.listener.mode,
            "block": self.listener.last_key[0],
            "spans": {m: [s.span.start, s.span.end] for m, s in self.executor.spans.items()},
            "jobs_in_progress": len(self.executor.jobs),
            "ms_per_block": self.executor.ms_per_block,
            "forward_calls": self.executor.calls,
        }


async def run_node(settings: NodeSettings) -> None:
    await NodeAgent(settings).run()
