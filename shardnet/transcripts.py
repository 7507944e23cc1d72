"""Stage transcripts: exactly the messages a stage's receipt hash chain covers, so anyone can
re-run the stage and check what it claimed.

`received` are the message bodies that entered the stage, in order (stage 0: the raw job input
first, then the tokens the last stage looped back); `sent` are the activation messages it sent
on (empty for the last stage, whose claim is the job output itself). Folding them gives the
receipt's `inputHash` and (for every stage but the last) `outputHash`, so a transcript fetched
from IPFS is checked against the chain without trusting whoever stored it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from shardnet.errors import ShardnetError
from shardnet.protocol import Receipt
from shardnet.receipts import ZERO_HASH, fold

MAGIC = b"shardnet-transcript/1\n"
MAX_MESSAGES = 100_000


class TranscriptError(ShardnetError):
    """Bytes that are not a well-formed transcript."""


@dataclass(frozen=True)
class Transcript:
    received: tuple[bytes, ...]
    sent: tuple[bytes, ...]

    @property
    def input_hash(self) -> bytes:
        return _chain(self.received)

    @property
    def output_hash(self) -> bytes:
        return _chain(self.sent)

    def encode(self) -> bytes:
        parts = [MAGIC, struct.pack("<II", len(self.received), len(self.sent))]
        for body in (*self.received, *self.sent):
            parts.append(struct.pack("<I", len(body)))
            parts.append(body)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> Transcript:
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 8:
            raise TranscriptError("not a shardnet transcript (bad magic or truncated header)")
        offset = len(MAGIC)
        n_received, n_sent = struct.unpack_from("<II", data, offset)
        if n_received + n_sent > MAX_MESSAGES:
            raise TranscriptError(f"transcript claims {n_received + n_sent} messages; at most {MAX_MESSAGES}")
        offset += 8
        bodies: list[bytes] = []
        for _ in range(n_received + n_sent):
            if offset + 4 > len(data):
                raise TranscriptError("transcript truncated inside a length prefix")
            (length,) = struct.unpack_from("<I", data, offset)
            offset += 4
            if offset + length > len(data):
                raise TranscriptError("transcript truncated inside a message")
            bodies.append(data[offset : offset + length])
            offset += length
        if offset != len(data):
            raise TranscriptError(f"{len(data) - offset} bytes after the last message")
        return cls(tuple(bodies[:n_received]), tuple(bodies[n_received:]))


def mismatch(transcript: Transcript, receipt: Receipt, last: bool, job_input: bytes | None = None) -> str:
    """Why `transcript` is not what its stage's `receipt` signed ("" when it is): its hash chains
    must give the receipt's input hash and (but for the last stage, whose output hash is the job
    output's) output hash; stage 0's first message must be the job input (`job_input`)."""
    if transcript.input_hash != receipt.input_hash:
        return "its messages in do not give the receipt's input hash"
    if not last and transcript.output_hash != receipt.output_hash:
        return "its messages out do not give the receipt's output hash"
    if job_input is not None and transcript.received[:1] != (job_input,):
        return "its first message is not the job's input"
    return ""


def _chain(bodies: tuple[bytes, ...]) -> bytes:
    running = ZERO_HASH
    for body in bodies:
        running = fold(running, body)
    return running
