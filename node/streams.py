"""Token streams: the last stage of a generation sends each token to the client that posted the
job while the job runs, as newline-delimited JSON. Only that client may listen (it signs its
request with the key that posted the job). The stream is a preview: the output the last stage
submits on-chain stays the source of truth, and the client checks the two are equal.

Each line is one JSON object: `{"tokens": [...]}` with the tokens produced since the last line,
then a last line `{"done": true, "status": ...}` (the job's status as this node sees it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

from node.executor import Executor
from node.runs import JobRun
from shardnet.errors import JobInputError
from shardnet.jobs import JobParams
from shardnet.ledger import Ledger
from shardnet.protocol import JobStatus

RUN_WAIT_POLL_S = 0.05  # how often to look for the job's run before its first message arrives here
IDLE_WAIT_S = 1.0  # how long to wait for a token before checking the job is still on
OPEN = (JobStatus.POSTED, JobStatus.ROUTED)


def refusal(ledger: Ledger, address: str, job_id: int, sender: str) -> str | None:
    """Why this node will not stream job `job_id` to `sender`, or None."""
    job = ledger.jobs.get(job_id)
    if job is None:
        return f"job {job_id} is unknown to this node"
    if sender.lower() != job.client.lower():
        return f"only the client that posted job {job_id} may read its tokens"
    if not job.route or job.route[-1].node != address:
        return f"this node is not the last stage of job {job_id}; read the route and ask that node"
    try:
        private = JobParams.decode(job.params).private
    except JobInputError:
        private = False
    if private:
        return f"job {job_id} is private: its tokens are not streamed in the clear; wait for its sealed output"
    return None


async def token_lines(ledger: Ledger, executor: Executor, job_id: int, start: int) -> AsyncIterator[bytes]:
    """Tokens from index `start` on, as they are produced, then a closing line."""
    run: JobRun | None = None
    while run is None:
        run = executor.jobs.get(job_id)
        job = ledger.jobs[job_id]
        if run is None:
            if job.status not in OPEN or time.time() > job.deadline:
                yield _line({"done": True, "status": job.status.name.lower()})
                return
            await asyncio.sleep(RUN_WAIT_POLL_S)
    sent = start
    while True:
        run.progress.clear()
        if len(run.tokens) > sent:
            yield _line({"tokens": run.tokens[sent:]})
            sent = len(run.tokens)
        status = ledger.jobs[job_id].status
        if run.ended or status not in OPEN:
            yield _line({"done": True, "status": status.name.lower()})
            return
        try:
            await asyncio.wait_for(run.progress.wait(), IDLE_WAIT_S)
        except TimeoutError:
            pass


def _line(obj: dict[str, object]) -> bytes:
    return json.dumps(obj).encode() + b"\n"
