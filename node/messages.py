"""Data-plane message body: 4-byte little-endian header length, a JSON header, then the payload
(an encoded activation, shardnet.model.quant.encode_activation, or nothing).

The header is written and read with orjson: a frame's headers are on every token's path, where
the stdlib's `json` took 40-50 us a header with the caches cold (its encoder is Python code
around the C scanner) and orjson 6-10 us."""

from __future__ import annotations

import struct
from typing import Any

import orjson


def pack(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = orjson.dumps(header)
    return struct.pack("<I", len(head)) + head + payload


def unpack(body: bytes) -> tuple[dict[str, Any], bytes]:
    if len(body) < 4:
        raise ValueError("message shorter than its length prefix")
    (n,) = struct.unpack_from("<I", body)
    if 4 + n > len(body):
        raise ValueError("message header runs past the body")
    header = orjson.loads(body[4 : 4 + n])  # orjson.JSONDecodeError is a ValueError
    if not isinstance(header, dict):
        raise ValueError("message header is not a JSON object")
    return header, body[4 + n :]
