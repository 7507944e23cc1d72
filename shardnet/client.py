"""Client SDK: post a job with escrow, wait for it to settle, read its history.

client = Client.from_deployment(account)
job_id = client.submit(model_id, {"prompt": "Hello"}, JobParams(kind="generate"), max_fee=10**15)
result = client.wait(job_id)
"""

from __future__ import annotations

import json
import time
from collections.abc import Container
from dataclasses import dataclass
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_utils.conversions import to_bytes

from shardnet.bindings import Contracts
from shardnet.chain import Chain
from shardnet.deployment import Deployment
from shardnet.errors import JobTimeout, ShardnetError
from shardnet.events import EventReader
from shardnet.jobs import JobParams
from shardnet.ledger import JobRecord, Ledger
from shardnet.protocol import JobStatus
from shardnet.storage import IpfsClient

SETTLED = (JobStatus.COMPLETED, JobStatus.EXPIRED, JobStatus.CANCELLED, JobStatus.ABORTED)
# no result will come: settled, or aborted while routed (its refund follows the claim window)
ENDED = (*SETTLED, JobStatus.ABORTING)


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

    @classmethod
    def from_deployment(cls, account: LocalAccount | None = None, deployment: Deployment | None = None) -> Client:
        deployment = deployment or Deployment.load()
        return cls(Chain.from_deployment(deployment, account=account), IpfsClient(deployment.ipfs_api))

    def submit(
        self, model_id: int, job_input: dict[str, Any], params: JobParams, max_fee: int, ttl_s: int = 600
    ) -> int:
        """Put the input on IPFS and post the job with `max_fee` wei in escrow. Returns the job id."""
        params.validate()
        input_cid = self.ipfs.add(json.dumps(job_input).encode(), name="job-input.json")
        deadline = self.chain.w3.eth.get_block("latest")["timestamp"] + ttl_s
        return self.c.market.post_job(
            model_id, input_cid, params.encode(), max_fee, deadline, audit_bps=params.audit_bps
        )

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

    def wait(
        self, job_id: int, timeout_s: float = 300, poll_s: float = 0.2, until: Container[JobStatus] = ENDED
    ) -> JobResult:
        """The job once its status is one of `until`: by default once it has ended (no result will
        come, though an aborted routed job settles later); `until=SETTLED` waits for the money too."""
        deadline = time.monotonic() + timeout_s
        while True:
            record = self.history(job_id)
            if record.status in until:
                output = None
                if record.output_cid:
                    output = json.loads(self.ipfs.cat(record.output_cid))
                return JobResult(record, output)
            if time.monotonic() > deadline:
                raise JobTimeout(
                    f"job {job_id} is still {record.status.name.lower()} after {timeout_s:.0f} s; "
                    f"check it later with 'shardnet job status {job_id}'"
                )
            time.sleep(poll_s)
