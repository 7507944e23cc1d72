"""Stage transcripts without a chain: they round-trip, their hash chains are the receipts', and
malformed bytes are refused with a reason."""

from __future__ import annotations

import pytest

from shardnet.protocol import Receipt
from shardnet.receipts import ZERO_HASH, fold
from shardnet.transcripts import Transcript, TranscriptError, mismatch


def test_roundtrip_and_hash_chains():
    t = Transcript((b'{"prompt": "hi"}', b"tokens-1"), (b"act-0", b"", b"act-1"))
    assert Transcript.decode(t.encode()) == t
    assert t.input_hash == fold(fold(ZERO_HASH, b'{"prompt": "hi"}'), b"tokens-1")
    assert Transcript((), ()).input_hash == ZERO_HASH


def test_mismatch_names_what_differs():
    t = Transcript((b"in",), (b"out",))
    good = Receipt(t.input_hash, t.output_hash, b"")
    assert mismatch(t, good, last=False, job_input=b"in") == ""
    assert "input hash" in mismatch(t, good._replace(input_hash=b"\1" * 32), last=False)
    assert "output hash" in mismatch(t, good._replace(output_hash=b"\1" * 32), last=False)
    assert mismatch(t, good._replace(output_hash=b"\1" * 32), last=True) == ""  # the last stage's is the output's
    assert "job's input" in mismatch(t, good, last=False, job_input=b"other")


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"not a transcript", "magic"),
        (Transcript((b"abc",), ()).encode()[:-1], "truncated inside a message"),
        (Transcript((b"abc",), ()).encode() + b"x", "after the last message"),
        (Transcript((), ()).encode()[:-8] + (10**6).to_bytes(4, "little") * 2, "at most"),
    ],
)
def test_malformed_bytes_are_refused(data, reason):
    with pytest.raises(TranscriptError, match=reason):
        Transcript.decode(data)
