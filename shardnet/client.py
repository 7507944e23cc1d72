"""Client SDK: post a job with escrow, wait for it to settle, read its history.

client = Client.from_deployment(account)
job_id = client.submit(model_id, {"prompt": "Hello"}, JobParams(kind="generate"), max_fee=10**15)
result = client.wait(job_id)
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import AsyncIterator, Callable, Container
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from eth_account.signers.local import LocalAccount
from eth_utils.abi import event_abi_to_log_topic
from eth_utils.conversions import to_bytes

from shardnet.bindings import Contracts
from shardnet.chain import Chain
from shardnet.cid import cid_v0
from shardnet.deployment import Deployment
from shardnet.direct import check_stream, output_from_node, token_stream
from shardnet.errors import JobTimeout, ShardnetError, StorageError
from shardnet.events import EventReader
from shardnet.jobs import JobParams, escrow_needed
from shardnet.ledger import JobRecord, Ledger
from shardnet.notices import JobNotices
from shardnet.protocol import ENDED, JobStatus
from shardnet.sealing import SealError, decrypt, encrypt, is_sealed, key_context, new_job_key, seal_key
from shardnet.signing import sign_request
from shardnet.storage import IpfsClient

if TYPE_CHECKING:
    import httpx

WHY_AFTER_S = 5.0  # a job unrouted this long gets an explanation (on_waiting)...
WHY_EVERY_S = 10.0  # ...looked at again this often
PROBE_TIMEOUT_S = 1.0
NODE_REQUEST_TIMEOUT_S = 10.0
RECHECK_S = 1.0  # with a subscription, the job is still read this often (a missed notice costs this)


@dataclass
class JobResult:
    record: JobRecord
    output: dict[str, Any] | None  # the output JSON from IPFS, when completed

    @property
    def status(self) -> JobStatus:
        return self.record.status

    @property
    def aborted(self) -> bool:
        """Aborted, settled or still open to its stages' delivery claims."""
        return self.record.status in (JobStatus.ABORTED, JobStatus.ABORTING)


class Client:
    def __init__(self, chain: Chain, ipfs: IpfsClient):
        self.chain = chain
        self.c = Contracts(chain)
        self.ipfs = ipfs
        self.job_events = EventReader(chain, [self.c.market.address])
        self.job_keys: dict[int, bytes] = {}  # private jobs posted here: their keys (shardnet.sealing)
        self._handed: dict[int, set[str]] = {}  # private job -> nodes that took its key
        self._last_stages: dict[int, tuple[str, str]] = {}  # job waited on -> its last stage, endpoint

    @classmethod
    def from_deployment(cls, account: LocalAccount | None = None, deployment: Deployment | None = None) -> Client:
        deployment = deployment or Deployment.load()
        return cls(Chain.from_deployment(deployment, account=account), IpfsClient(deployment.ipfs_api))

    def submit(
        self, model_id: int, job_input: dict[str, Any], params: JobParams, max_fee: int, ttl_s: int = 600
    ) -> int:
        """Put the input on IPFS and post the job with `max_fee` wei in escrow. Returns the job id
        once both are done. A private job's input goes to IPFS encrypted under a new job key,
        which `wait` hands to the route's nodes once the job is routed (keep this Client to read
        the output).

        The input's CID is computed here (`cid_v0`, the daemon's own layout), so the job is posted
        while the daemon stores the bytes, in a thread: the two round trips overlap rather than
        add up. A node that reads the input first has its read wait for the bytes. Should the
        daemon fail to store them, the job is cancelled (its escrow credited back) and
        StorageError says so."""
        params.validate()
        data, key = json.dumps(job_input).encode(), None
        if params.private:
            key = new_job_key()
            data = encrypt(key, data, "input")
        input_cid = cid_v0(data)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="input-add") as pool:
            stored = pool.submit(self.ipfs.add, data, "job-input.json", cid=input_cid)
            deadline = self.chain.w3.eth.get_block("latest")["timestamp"] + ttl_s
            try:
                job_id = self.c.market.post_job(
                    model_id, input_cid, params.encode(), max_fee, deadline, audit_bps=params.audit_bps
                )
            finally:
                failure = stored.exception()  # waits for the daemon either way
        if failure is not None:
            outcome = self._withdraw(job_id)
            raise StorageError(f"job {job_id}: its input could not be put on IPFS ({failure}); {outcome}")
        if key is not None:
            self.job_keys[job_id] = key
        return job_id

    def _withdraw(self, job_id: int) -> str:
        """Cancel a posted job whose input never reached IPFS; says what became of its escrow."""
        try:
            self.c.market.cancel_job(job_id)
        except ShardnetError as exc:  # routed meanwhile: its first stage cannot read the input
            return (
                f"it could not be cancelled ({exc}): its route aborts it when the first stage cannot "
                "read the input, and the escrow is refunded then"
            )
        return "the job is cancelled and its escrow credited back (withdraw it with 'shardnet job withdraw')"

    def hand_over_key(self, record: JobRecord) -> None:
        """A private job's key, sealed to each node of its route (its on-chain `dataKey`) and
        handed to it, signed with the key that posted the job; each node once. A node that does
        not answer is tried again at the next call."""
        import httpx

        key, account = self.job_keys.get(record.job_id), self.chain.account
        if key is None or account is None or not record.route:
            return
        handed = self._handed.setdefault(record.job_id, set())
        path = f"/v1/jobs/{record.job_id}/key"
        context = key_context(record.job_id, self.chain.chain_id, self.c.market.address)
        for node in dict.fromkeys(s.node for s in record.route):
            if node in handed:
                continue
            info = self.c.nodes.node(node)
            try:
                body = json.dumps({"sealed": seal_key(info.data_key, key, context).hex()}).encode()
                reply = self.http.post(
                    info.endpoint.rstrip("/") + path,
                    content=body,
                    headers=sign_request(account, path, body),
                )
            except (SealError, httpx.HTTPError):
                continue
            if reply.status_code == 200:
                handed.add(node)

    def read_output(self, job_id: int, output_cid: str) -> dict[str, Any] | None:
        """A job's output JSON; a private job's opened with its key (None without it). Read from
        the job's last stage while this client waits on the job (`wait` learns the route), else
        from IPFS (output_from_node)."""
        last = self._last_stages.get(job_id)
        account = self.chain.account
        raw = output_from_node(self.http, last[1], account, job_id, output_cid) if last and account else None
        if raw is None:
            raw = self.ipfs.cat(output_cid)
        if is_sealed(raw):
            key = self.job_keys.get(job_id)
            if key is None:
                return None
            raw = decrypt(key, raw, f"output:{job_id}")
        output: dict[str, Any] = orjson.loads(raw)  # a vocabulary's logits parse ~5x faster than with json
        return output

    def jobs_of(self, client: str) -> list[JobRecord]:
        """Every job `client` posted, oldest first, each rebuilt from its events."""
        reader = self.job_events
        posted = "0x" + event_abi_to_log_topic(self.c.market.contract.events.JobPosted.abi).hex().removeprefix("0x")
        who = "0x" + bytes.fromhex(client.removeprefix("0x")).rjust(32, b"\0").hex()
        events = reader.fetch(reader.start_block, reader.head(), topics=[posted, None, who])
        return [self.history(e.args["jobId"]) for e in events if e.name == "JobPosted"]

    def why_waiting(self, record: JobRecord) -> str:
        """Why a posted job is not routed yet, as the network looks now: the blocks of its model
        that no active node whose agent answers holds in a confirmed span, or else that routing
        is up to a coordinator."""
        import httpx

        model = self.c.models.model(record.model_id)
        if model.deprecated:
            return f"model {record.model_id} is deprecated: no coordinator routes jobs to it; cancel the job"
        covered = [0] * model.block_count
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as http:
            for node in self.c.models.assigned_nodes(record.model_id):
                a = self.c.models.assignment(record.model_id, node)
                if not a.confirmed or not self.c.nodes.is_active(node):
                    continue
                try:
                    alive = http.get(self.c.nodes.node(node).endpoint.rstrip("/") + "/health").status_code == 200
                except httpx.HTTPError:
                    alive = False
                for block in range(a.start, a.end) if alive else ():
                    covered[block] += 1
        missing = [b for b, n in enumerate(covered) if n == 0]
        if missing:
            return (
                f"unroutable for now: blocks {_ranges(missing)} of model {record.model_id} have no live node with a "
                f"confirmed span; it is routed once nodes serve them (it expires at {record.deadline}, unix time)"
            )
        return "every block has a live node serving it: waiting for a coordinator to route the job"

    def cost(self, model_id: int) -> int:
        """Wei a job on `model_id` needs in escrow today: every block at the model's price, the
        coordinator's cut, and the reserve that pays a committee should a stage be audited (the
        coordinator refuses less; what is not spent comes back)."""
        model, terms = self.c.models.model(model_id), self.c.market.terms()
        fees = model.block_count * model.price_per_block
        return escrow_needed(fees, terms.coordinator_fee_bps, terms.committee_size * terms.verify_fee_bps)

    def history(self, job_id: int) -> JobRecord:
        """The job's whole history, rebuilt from its events (every JobMarket event indexes jobId)."""
        reader = self.job_events
        topic = "0x" + to_bytes(job_id).rjust(32, b"\0").hex()
        ledger = Ledger()
        for event in reader.fetch(reader.start_block, reader.head(), topics=[None, topic]):
            if event.args.get("jobId") == job_id:
                ledger.apply(event)
        if job_id not in ledger.jobs:
            raise ShardnetError(
                f"job {job_id} does not exist on this deployment; check the id "
                f"(jobs so far: {self.c.market.job_count()})"
            )
        return ledger.jobs[job_id]

    def token_stream(self, job_id: int, timeout_s: float = 300) -> AsyncIterator[list[int]]:
        """A generation's tokens while the job runs, straight from its last stage, as lists of new
        tokens (shardnet.direct.token_stream: only the client that posted the job may listen)."""
        return token_stream(self, job_id, timeout_s)

    def stream(
        self, job_id: int, on_tokens: Callable[[list[int]], None], timeout_s: float = 300
    ) -> tuple[JobResult, list[int]]:
        """Stream a generation (`on_tokens` gets each batch of new tokens), then wait for its
        on-chain result and check the streamed tokens equal it."""

        async def consume() -> list[int]:
            streamed: list[int] = []
            async for tokens in self.token_stream(job_id, timeout_s):
                streamed += tokens
                on_tokens(tokens)
            return streamed

        streamed = asyncio.run(consume())
        result = self.wait(job_id, timeout_s)
        check_stream(result, streamed)
        return result, streamed

    def wait(
        self,
        job_id: int,
        timeout_s: float = 300,
        poll_s: float = 0.2,
        until: Container[JobStatus] = ENDED,
        on_change: Callable[[JobRecord], None] | None = None,
        on_waiting: Callable[[str], None] | None = None,
    ) -> JobResult:
        """The job once its status is one of `until`: by default once it has ended (no result will
        come, though an aborted routed job settles later); `until=SETTLED` waits for the money too.
        `on_change` sees the record each time its status or route changes (progress for people);
        `on_waiting` gets why a job stays unrouted (`why_waiting`), whenever that changes. With a
        websocket in the deployment it wakes on the job's own events; else it polls every `poll_s`."""
        notices = self._notices(job_id)
        try:
            return self._wait(job_id, timeout_s, poll_s, until, on_change, on_waiting, notices)
        finally:
            self._last_stages.pop(job_id, None)
            if notices is not None:
                notices.close()

    @functools.cached_property
    def http(self) -> httpx.Client:
        """One HTTP client for the requests this client makes to nodes: its connections, and its
        TLS set-up, are reused (a new client loads the CA store again, about 40 ms here)."""
        import httpx

        return httpx.Client(timeout=NODE_REQUEST_TIMEOUT_S)

    def _note_last_stage(self, record: JobRecord) -> None:
        """Where the output will come from: the endpoint of the route's last stage, looked up once
        per route (while the job runs, unless it ran before this client saw it routed)."""
        node = record.route[-1].node if record.route else None
        known = self._last_stages.get(record.job_id)
        if node is None or (known is not None and known[0] == node):
            return
        try:
            self._last_stages[record.job_id] = (node, self.c.nodes.node(node).endpoint)
        except ShardnetError:
            self._last_stages.pop(record.job_id, None)
            return
        _ = self.http  # made now, while the job runs, rather than when its output is read

    def _notices(self, job_id: int) -> JobNotices | None:
        """A subscription to the job's events, or None (no websocket: `wait` polls instead)."""
        from websockets.exceptions import WebSocketException

        deployment = self.chain.deployment
        if deployment is None or not deployment.ws_url:
            return None
        try:
            read = functools.partial(self.read_output, job_id)
            return JobNotices(deployment.ws_url, self.c.market.address, job_id, self.job_events.decoder, read)
        except (OSError, ValueError, TimeoutError, WebSocketException):
            return None

    def _wait(
        self,
        job_id: int,
        timeout_s: float,
        poll_s: float,
        until: Container[JobStatus],
        on_change: Callable[[JobRecord], None] | None,
        on_waiting: Callable[[str], None] | None,
        notices: JobNotices | None,
    ) -> JobResult:
        deadline = time.monotonic() + timeout_s
        seen: tuple[JobStatus, int] | None = None
        started, explained, last_reason = time.monotonic(), 0.0, ""
        while True:
            record = self.history(job_id)
            self._note_last_stage(record)
            if record.status == JobStatus.ROUTED and job_id in self.job_keys:
                self.hand_over_key(record)
            if on_change is not None and (record.status, record.reroutes) != seen:
                seen = (record.status, record.reroutes)
                on_change(record)
            now = time.monotonic()
            if on_waiting is not None and record.status == JobStatus.POSTED and now - started > WHY_AFTER_S:
                if now - explained > WHY_EVERY_S:
                    explained = now
                    reason = self.why_waiting(record)
                    if reason != last_reason:
                        last_reason = reason
                        on_waiting(reason)
            if record.status in until:
                output = None
                if record.output_cid:  # read since the result's notice came, or now
                    early = None
                    if notices is not None:
                        notices.wait(0)  # (the notice may have come while the history was read)
                        early = notices.output_read(record.output_cid)
                    output = early.result() if early is not None else self.read_output(job_id, record.output_cid)
                return JobResult(record, output)
            if time.monotonic() > deadline:
                raise JobTimeout(
                    f"job {job_id} is still {record.status.name.lower()} after {timeout_s:.0f} s; "
                    f"check it later with 'shardnet job status {job_id}'"
                )
            if notices is None:
                time.sleep(poll_s)
            else:
                notices.wait(min(RECHECK_S, max(0.0, deadline - time.monotonic())))


def _ranges(blocks: list[int]) -> str:
    """[0, 1, 2, 5] -> "[0,3) [5,6)"."""
    out: list[str] = []
    start = prev = blocks[0]
    for b in [*blocks[1:], None]:
        if b is not None and b == prev + 1:
            prev = b
            continue
        out.append(f"[{start},{prev + 1})")
        if b is not None:
            start = prev = b
    return " ".join(out)
