"""Storage over the real IPFS daemon (Kubo RPC API), plus refusal of bad bytes."""

import hashlib
import os
import time

import httpx
import pytest

from shardnet.cid import cid_v0
from shardnet.errors import ContentMismatch, ContentNotFound, StorageError, StorageUnavailable
from shardnet.storage import IpfsClient
from tests.conftest import free_port


def test_large_file_roundtrip_with_kubo_cid(ipfs, tmp_path):
    data = os.urandom(5 * 1024 * 1024 + 12345)
    path = tmp_path / "blob.bin"
    path.write_bytes(data)
    cid = ipfs.add_file(path, progress=True)
    # the daemon's CID equals the independent local hasher (CIDv0, 256 KiB chunks)
    assert cid == cid_v0(data)
    back = ipfs.cat(cid)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    assert back == data
    ipfs.pin(cid)
    assert ipfs.block_stat(cid) > 0


def test_missing_cid_times_out_cleanly(ipfs):
    missing = cid_v0(os.urandom(64))  # never added anywhere
    started = time.monotonic()
    with pytest.raises(ContentNotFound):
        ipfs.cat(missing, timeout=1.5)
    assert time.monotonic() - started < 10


def test_tampered_bytes_are_refused():
    good = b"weights" * 1000
    cid = cid_v0(good)

    def serve_tampered(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=good[:-1] + b"X")

    client = IpfsClient("http://ipfs.invalid")
    client._http = httpx.Client(base_url="http://ipfs.invalid/api/v0", transport=httpx.MockTransport(serve_tampered))
    with pytest.raises(ContentMismatch, match=cid):
        client.cat(cid)


def test_non_v0_cid_is_refused(ipfs):
    with pytest.raises(StorageError, match="CIDv0"):
        ipfs.cat("bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi")


def test_stopped_daemon_names_the_fix():
    with IpfsClient(f"http://127.0.0.1:{free_port()}", timeout=2) as client:
        with pytest.raises(StorageUnavailable, match="shardnet devnet up"):
            client.peer_id()


def test_a_daemon_that_drops_the_request_is_unavailable_not_a_crash():
    """A daemon killed mid-request (the connection closes with no answer) raises
    StorageUnavailable, which callers handle, rather than an httpx error they do not expect."""
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def drop_every_request() -> None:
        for _ in range(2):
            conn, _ = server.accept()
            conn.recv(65536)
            conn.close()  # read the request, answer nothing

    threading.Thread(target=drop_every_request, daemon=True).start()
    try:
        with IpfsClient(f"http://127.0.0.1:{port}", timeout=2) as client:
            with pytest.raises(StorageUnavailable, match="dropped the request"):
                client.cat(cid_v0(b"x"))
            with pytest.raises(StorageUnavailable, match="dropped the request"):
                client.add(b"x")
    finally:
        server.close()
