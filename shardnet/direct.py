"""What a client reads straight from a job's last stage instead of waiting on the chain and IPFS:
a running generation's tokens (node/streams.py) and the output the stage has just submitted
(node/outputs.py). Both are requests signed by the key that posted the job, and both are checked
against the chain: the streamed tokens must equal the on-chain output (`check_stream`), and the
handed-over output must have the CID the result names."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from eth_account.signers.local import LocalAccount

from shardnet.cid import cid_v0
from shardnet.errors import JobTimeout, ShardnetError, StreamMismatch
from shardnet.ledger import JobRecord
from shardnet.protocol import ENDED, HANDOVER_MAX_BYTES, JobStatus
from shardnet.signing import sign_request

if TYPE_CHECKING:
    import httpx

    from shardnet.client import Client, JobResult

STREAM_POLL_S = 0.1  # waiting for a job's route, and backing off after a broken stream
STREAM_RETRIES = 5
HANDOVER_TIMEOUT_S = 2.0  # a last stage handing an output over (output_from_node), before IPFS is asked


async def token_stream(client: Client, job_id: int, timeout_s: float = 300) -> AsyncIterator[list[int]]:
    """A generation's tokens while the job runs, straight from its last stage (node/streams.py),
    as lists of new tokens. The request is signed with this client's key: only the client that
    posted the job may listen. Follows a reroute of the last stage, resuming where it was. A
    preview: the on-chain result is the truth (`stream` checks the two are equal)."""
    import httpx

    account = client.chain.account
    if account is None:
        raise ShardnetError("streaming needs the key that posted the job: pass an account to the Client")
    if job_id in client.job_keys:
        raise ShardnetError(f"job {job_id} is private: its tokens are not streamed; wait for its sealed output")
    got, failures = 0, 0
    deadline = time.monotonic() + timeout_s
    path = f"/v1/jobs/{job_id}/tokens"
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as http:
        while True:
            record = await asyncio.to_thread(client.history, job_id)
            if record.status in ENDED:  # (a job that ended before its stream did: the rest is in its output)
                rest = await _unstreamed(client, record, got)
                if rest:
                    yield rest
                return
            if time.monotonic() > deadline:
                raise JobTimeout(f"job {job_id} streamed {got} tokens in {timeout_s:.0f} s and is not done")
            if not record.route:
                await asyncio.sleep(STREAM_POLL_S)
                continue
            node = await asyncio.to_thread(client.c.nodes.node, record.route[-1].node)
            body = json.dumps({"from": got}).encode()
            try:
                async with http.stream(
                    "POST",
                    node.endpoint.rstrip("/") + path,
                    content=body,
                    headers=sign_request(account, path, body),
                ) as response:
                    if response.status_code != 200:
                        raise ShardnetError(f"HTTP {response.status_code}: {(await response.aread())[:300]!r}")
                    async for line in response.aiter_lines():
                        message = json.loads(line) if line.strip() else {}
                        if message.get("tokens"):
                            got += len(message["tokens"])
                            yield list(message["tokens"])
                        if message.get("done"):
                            if message.get("status") != "completed":
                                return
                            break  # (the node's run may be gone: the loop's history read finds the rest)
            except (httpx.HTTPError, ShardnetError, ValueError) as exc:
                failures += 1
                if failures > STREAM_RETRIES:
                    raise ShardnetError(
                        f"the token stream of job {job_id} from {node.endpoint} failed {failures} times "
                        f"({exc}); the result will still be on-chain: 'shardnet job status {job_id}'"
                    ) from None
                await asyncio.sleep(STREAM_POLL_S * failures)


async def _unstreamed(client: Client, record: JobRecord, got: int) -> list[int]:
    """The tokens of a completed generation after the first `got`, from its on-chain output."""
    if record.status != JobStatus.COMPLETED or not record.output_cid:
        return []
    output = await asyncio.to_thread(client.read_output, record.job_id, record.output_cid)
    return list((output or {}).get("tokens", [])[got:])


def output_from_node(
    http: httpx.Client,
    endpoint: str,
    account: LocalAccount,
    job_id: int,
    cid: str,
    timeout_s: float = HANDOVER_TIMEOUT_S,
) -> bytes | None:
    """Job `job_id`'s output straight from its last stage, which holds it a while after submitting
    it (node/outputs.py): one HTTP request, signed by the key that posted the job, where IPFS
    would wait for the node's write to the daemon and then fetch the bytes back. None unless the
    node answers within `timeout_s` with at most HANDOVER_MAX_BYTES whose CID is `cid`: a node
    that lies, stalls or no longer holds it costs a read from IPFS and no more."""
    import httpx

    path = f"/v1/jobs/{job_id}/output"
    url, headers = endpoint.rstrip("/") + path, sign_request(account, path, b"")
    deadline = time.monotonic() + timeout_s
    chunks, size = [], 0
    try:
        with http.stream("POST", url, content=b"", headers=headers, timeout=timeout_s) as reply:
            if reply.status_code != 200:
                return None
            for chunk in reply.iter_bytes():
                size += len(chunk)
                if size > HANDOVER_MAX_BYTES or time.monotonic() > deadline:
                    return None
                chunks.append(chunk)
    except httpx.HTTPError:
        return None
    data = b"".join(chunks)
    return data if cid_v0(data) == cid else None


def check_stream(result: JobResult, streamed: list[int]) -> None:
    """Raise if a completed generation's on-chain output differs from the tokens streamed."""
    if result.status != JobStatus.COMPLETED or result.output is None:
        return
    final = result.output.get("tokens")
    if final != streamed:
        raise StreamMismatch(
            f"job {result.record.job_id}: the last stage streamed {streamed} but its on-chain output "
            f"{result.record.output_cid} holds {final}; the output is the result (challenge the stage "
            "with 'shardnet job challenge' if you doubt it)"
        )
