"""Outputs a last stage keeps for a while after submitting them, to hand straight to the job's
client (`POST /v1/jobs/{id}/output`, signed by the key that posted the job).

A client reads its output as soon as the ResultSubmitted event names it. From IPFS, that read
waits for this node's write of the output to the daemon (it goes on beside `submitResult`) and
then fetches it back: 20-50 ms on the devnet, more for a forward job's logits. From the node it is
one HTTP request. The client checks the bytes against the CID on-chain (shardnet.client), so
where they come from does not matter, and falls back to IPFS when this node no longer holds them.
Everyone else reads the output from IPFS.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from shardnet.ledger import Ledger
from shardnet.protocol import HANDOVER_MAX_BYTES

KEEP_COUNT = 256  # outputs held at most (the oldest go first)...
KEEP_BYTES = 4 * HANDOVER_MAX_BYTES  # ...and bytes, all of them together
KEEP_S = 600.0  # a client reads its output within moments of the result; later reads go to IPFS


class RecentOutputs:
    """The outputs this node submitted lately, by job, bounded in count, bytes and age."""

    def __init__(self, max_count: int = KEEP_COUNT, max_bytes: int = KEEP_BYTES, keep_s: float = KEEP_S):
        self.max_count, self.max_bytes, self.keep_s = max_count, max_bytes, keep_s
        self._kept: OrderedDict[int, tuple[float, bytes]] = OrderedDict()
        self._bytes = 0

    def keep(self, job_id: int, output: bytes) -> None:
        """Hold `output` (one over HANDOVER_MAX_BYTES is left to IPFS), dropping the oldest past
        the bounds."""
        if len(output) > HANDOVER_MAX_BYTES:
            return
        self.drop(job_id)
        self._kept[job_id] = (time.monotonic(), output)
        self._bytes += len(output)
        while len(self._kept) > self.max_count or self._bytes > self.max_bytes:
            _, (_, old) = self._kept.popitem(last=False)
            self._bytes -= len(old)

    def get(self, job_id: int) -> bytes | None:
        entry = self._kept.get(job_id)
        if entry is None:
            return None
        if time.monotonic() - entry[0] > self.keep_s:
            self.drop(job_id)
            return None
        return entry[1]

    def drop(self, job_id: int) -> None:
        entry = self._kept.pop(job_id, None)
        if entry is not None:
            self._bytes -= len(entry[1])

    def __len__(self) -> int:
        return len(self._kept)


def refusal(ledger: Ledger, job_id: int, sender: str) -> str | None:
    """Why this node will not hand job `job_id`'s output to `sender`, or None."""
    job = ledger.jobs.get(job_id)
    if job is None:
        return f"job {job_id} is unknown to this node"
    if sender.lower() != job.client.lower():
        return f"only the client that posted job {job_id} reads its output here; read it from IPFS"
    return None
