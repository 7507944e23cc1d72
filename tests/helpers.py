"""Test helpers shared by several test files: contract artefacts and reverts, a recording relay
for links, a node's Prometheus metrics, and a plain HTTP server on loopback."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import pytest
import solcx

from shardnet import contract_errors, tools
from tests.conftest import REPO


@cache
def attacker_artifact() -> tuple[list, str]:
    source = (REPO / "tests/contracts/Attacker.sol").read_text()
    out = solcx.compile_standard(
        {
            "language": "Solidity",
            "sources": {"Attacker.sol": {"content": source}},
            "settings": {"outputSelection": {"*": {"*": ["abi", "evm.bytecode.object"]}}, "evmVersion": "cancun"},
        },
        solc_binary=tools.solc_binary(),
    )
    data = out["contracts"]["Attacker.sol"]["Attacker"]
    return data["abi"], "0x" + data["evm"]["bytecode"]["object"]


def deploy_attacker(chain):
    abi, bytecode = attacker_artifact()
    factory = chain.w3.eth.contract(abi=abi, bytecode=bytecode)
    with chain._nonce_lock:
        tx = factory.constructor().build_transaction(
            {
                "from": chain.account.address,
                "chainId": chain.chain_id,
                "nonce": chain.w3.eth.get_transaction_count(chain.account.address, "pending"),
            }
        )
        receipt = chain._send(tx, chain.account)
    return chain.w3.eth.contract(address=receipt["contractAddress"], abi=abi)


def reverts(error_name: str, /, **expected_args):
    """pytest.raises for the named contract error, checking the given args."""
    cls = getattr(contract_errors, error_name)

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(cls)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self._ctx.__exit__(*exc)
            for key, value in expected_args.items():
                assert self.info.value.error_args[key] == value, (key, self.info.value.error_args)
            return handled

    return _Check()


class Relay:
    """A TCP relay to a local port that records every byte each connection sends, as an
    eavesdropper placed between two nodes would see it; `replay` resends one connection's bytes
    in a new connection, as an attacker who recorded it would. `tamper` rewrites what the target
    answers on its way back (each chunk as it is read), as a man in the middle would."""

    def __init__(self, target_port: int, tamper: Callable[[bytes], bytes] | None = None):
        import socket
        import threading

        self.target_port = target_port
        self.tamper = tamper
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.sent: list[bytearray] = []  # per connection: what the connecting side sent
        self.answered: list[bytearray] = []  # and what the target answered
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:  # the target is down (restarting): so is the relay, for this connection
                conn.close()
                continue
            sent, answered = bytearray(), bytearray()
            self.sent.append(sent)
            self.answered.append(answered)
            threading.Thread(target=self._pump, args=(conn, upstream, sent), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn, answered, self.tamper), daemon=True).start()

    @staticmethod
    def _pump(src, dst, record: bytearray, tamper: Callable[[bytes], bytes] | None = None) -> None:
        try:
            while data := src.recv(1 << 16):
                record += data
                dst.sendall(tamper(data) if tamper else data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(2)
                except OSError:
                    pass

    def replay(self, index: int, wait_s: float = 2.0) -> bytes:
        """Send connection `index`'s recorded bytes again to the target; returns its answer."""
        import socket
        import time

        answer = bytearray()
        recorded = bytes(self.sent[index])
        head, _, rest = recorded.partition(b"\r\n\r\n")  # an HTTP request, then what followed its answer
        with socket.create_connection(("127.0.0.1", self.target_port)) as conn:
            conn.settimeout(0.5)
            conn.sendall(head + b"\r\n\r\n")
            while b"\r\n\r\n" not in answer:
                answer += conn.recv(1 << 16)
            for frame in _ws_frames(rest):  # one WebSocket message at a time, as its sender did
                conn.sendall(frame)
                time.sleep(0.2)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                try:
                    data = conn.recv(1 << 16)
                except TimeoutError:
                    continue
                if not data:
                    break
                answer += data
        return bytes(answer)

    def close(self) -> None:
        self.server.close()


def _ws_frames(data: bytes) -> list[bytes]:
    """Split a client's WebSocket byte stream into its frames (RFC 6455 section 5.2)."""
    frames, at = [], 0
    while at + 2 <= len(data):
        n, head = data[at + 1] & 0x7F, 2
        if n == 126:
            n, head = int.from_bytes(data[at + 2 : at + 4], "big"), 4
        elif n == 127:
            n, head = int.from_bytes(data[at + 2 : at + 10], "big"), 10
        head += 4 if data[at + 1] & 0x80 else 0  # the mask key
        frames.append(data[at : at + head + n])
        at += head + n
    return frames


def node_metric(port: int, sample: str) -> float:
    """A sample's value on the /metrics of the node at `port` (0 when it is not there), e.g.
    `shardnet_bytes_in_total` or `shardnet_requests_refused_total{reason="bad-frame"}`."""
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(sample + " ")), 0.0)


async def http_server(method: str, handler: Callable[..., Any], port: int = 0) -> tuple[Any, str]:
    """A real aiohttp server on loopback (`port`, or any free one) answering `method` on every
    path with `handler`: (its runner, to clean up; its base URL)."""
    from aiohttp import web

    app = web.Application()
    app.router.add_route(method, "/{tail:.*}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"
