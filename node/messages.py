"""Data-plane message body: 4-byte little-endian header length, a JSON header, then the payload
(an encoded activation, shardnet.model.quant.encode_activation, or nothing)."""

from __future__ import annotations

import json
import struct
from typing import Any


def pack(header: dict[str, Any], payload: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<I", len(head)) + head + payload


def unpack(body: bytes) -> tuple[dict[str, Any], bytes]:
    if len(body) < 4:
        raise ValueError("message shorter than its length prefix")
    (n,) = struct.unpack_from("<I", body)
    if 4 + n > len(body):
        raise ValueError("message header runs past the body")
    header = json.loads(body[4 : 4 + n])
    if not isinstance(header, dict):
        raise ValueError("message header is not a JSON object")
    return header, body[4 + n :]
