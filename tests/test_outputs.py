"""A last stage hands a job's output straight to its client (node/outputs.py), and the client takes
only bytes whose CID is the one on-chain (shardnet.direct.output_from_node): a node that lies,
stalls, refuses or sends too much costs a read from IPFS and nothing else. The real stack's side
is in tests/test_network.py."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

import shardnet.direct
from node.outputs import RecentOutputs
from shardnet.chain import dev_account
from shardnet.cid import cid_v0
from shardnet.direct import output_from_node
from shardnet.protocol import HANDOVER_MAX_BYTES
from shardnet.signing import recover_sender

OUTPUT = b'{"kind":"generate","tokens":[5,6,7]}'


def test_recent_outputs_are_bounded_in_count_bytes_and_age():
    kept = RecentOutputs(max_count=2, max_bytes=10, keep_s=60)
    kept.keep(1, b"aaaa")
    kept.keep(2, b"bbbb")
    kept.keep(3, b"cc")  # over the count: the oldest goes
    assert (kept.get(1), kept.get(2), kept.get(3)) == (None, b"bbbb", b"cc")
    kept.keep(4, b"d" * 9)  # over the count, then the bytes: the oldest go until the rest fit
    assert (kept.get(2), kept.get(3), kept.get(4), len(kept)) == (None, None, b"d" * 9, 1)
    kept.keep(4, b"e")  # kept again: replaces, and its bytes are counted once
    kept.keep(5, b"f" * 9)
    assert (kept.get(4), kept.get(5)) == (b"e", b"f" * 9)

    whole = RecentOutputs()
    whole.keep(6, b"x" * (HANDOVER_MAX_BYTES + 1))  # left to IPFS
    assert whole.get(6) is None and len(whole) == 0

    brief = RecentOutputs(keep_s=0.05)
    brief.keep(7, b"g")
    assert brief.get(7) == b"g"
    time.sleep(0.1)
    assert brief.get(7) is None and len(brief) == 0


class _Node(BaseHTTPRequestHandler):
    """A last stage as `mode` says: honest, lying, refusing, stalling or sending too much."""

    mode = "honest"
    senders: list[str | None] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        _Node.senders.append(recover_sender(self.path, body, self.headers.get("x-shardnet-signature", "")))
        if self.mode == "refusing":
            self.send_response(404)
            self.end_headers()
            return
        if self.mode == "stalling":
            time.sleep(1.5)
        data = {"honest": OUTPUT, "lying": OUTPUT.replace(b"7", b"8"), "stalling": OUTPUT}.get(self.mode)
        if self.mode == "flooding":
            data = b"x" * (1 << 20)
        assert data is not None
        self.send_response(200)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a client that gave up
            self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def node_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Node)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("mode", ["honest", "lying", "refusing", "stalling", "flooding"])
def test_a_client_takes_an_output_from_its_last_stage_only_when_its_cid_is_the_results(node_url, mode, monkeypatch):
    monkeypatch.setattr(_Node, "mode", mode)
    monkeypatch.setattr(_Node, "senders", [])
    monkeypatch.setattr(shardnet.direct, "HANDOVER_MAX_BYTES", 64 << 10)  # the flood is 1 MiB
    client = dev_account(12)
    with httpx.Client() as http:
        started = time.monotonic()
        got = output_from_node(http, node_url, client, 7, cid_v0(OUTPUT), timeout_s=0.5)
        elapsed = time.monotonic() - started
    assert got == (OUTPUT if mode == "honest" else None)
    assert elapsed < 1.2  # a stalling node is given up on at the timeout
    assert _Node.senders == [client.address]  # signed by the key that posted the job, over its path
