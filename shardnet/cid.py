"""Content identifiers computed locally, the way Kubo's `ipfs add` does by default.

`cid_v0(data)` gives the CIDv0 of a file added with `cid-version=0`, fixed 256 KiB chunks,
the balanced layout (174 links per node) and dag-pb leaves. The storage module uses it to
refuse bytes that do not hash to the CID it asked for; it shares no code with the daemon.
"""

from __future__ import annotations

import hashlib

import base58

CHUNK_SIZE = 262_144  # bytes, Kubo's default `size-262144` chunker
MAX_LINKS = 174  # Kubo's balanced layout: links per internal node
_SHA2_256 = b"\x12\x20"  # multihash prefix: sha2-256, 32-byte digest
_UNIXFS_FILE = 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field_bytes(field: int, value: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(value)) + value


def _field_varint(field: int, value: int) -> bytes:
    return _varint(field << 3) + _varint(value)


def _unixfs_file(data: bytes | None, filesize: int, blocksizes: list[int]) -> bytes:
    out = _field_varint(1, _UNIXFS_FILE)
    if data:
        out += _field_bytes(2, data)
    out += _field_varint(3, filesize)
    for size in blocksizes:  # proto2 repeated, not packed
        out += _field_varint(4, size)
    return out


def _pb_node(links: list[tuple[bytes, int]], data: bytes) -> bytes:
    """dag-pb PBNode: links (field 2) are written before data (field 1)."""
    out = b""
    for multihash, tsize in links:
        link = _field_bytes(1, multihash) + _field_bytes(2, b"") + _field_varint(3, tsize)
        out += _field_bytes(2, link)
    return out + _field_bytes(1, data)


class _Node:
    __slots__ = ("multihash", "filesize", "tsize")

    def __init__(self, block: bytes, filesize: int, tsize: int):
        self.multihash = _SHA2_256 + hashlib.sha256(block).digest()
        self.filesize = filesize  # payload bytes below this node
        self.tsize = tsize  # serialized bytes of this node and everything below


def _leaf(chunk: bytes) -> _Node:
    block = _pb_node([], _unixfs_file(chunk, len(chunk), []))
    return _Node(block, len(chunk), len(block))


def _parent(children: list[_Node]) -> _Node:
    filesize = sum(c.filesize for c in children)
    block = _pb_node(
        [(c.multihash, c.tsize) for c in children],
        _unixfs_file(None, filesize, [c.filesize for c in children]),
    )
    return _Node(block, filesize, len(block) + sum(c.tsize for c in children))


def cid_v0(data: bytes, chunk_size: int = CHUNK_SIZE) -> str:
    """The CIDv0 (base58btc "Qm…") Kubo gives `data` with default add options."""
    chunks = [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]
    level = [_leaf(c) for c in chunks]
    if len(level) == 1:
        return base58.b58encode(level[0].multihash).decode()
    # Balanced layout: full subtrees of MAX_LINKS^depth leaves, left to right; the root is the
    # first level that has a single node, so a lone child is still wrapped at each depth.
    while len(level) > 1:
        level = [_parent(level[i : i + MAX_LINKS]) for i in range(0, len(level), MAX_LINKS)]
    return base58.b58encode(level[0].multihash).decode()
