"""Links between stages (node/link.py) over real sockets: a uvicorn server with the node's app
and the node's link client. What arrives is what was sent, in order, from the node the chain
names; a wrong key, no key, a wrong recipient, a replayed, reordered, truncated or oversize frame
and a replayed session are each refused, and a malformed frame counts against its sender."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import uvicorn
from websockets.client import ClientProtocol
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

from node.link import MAX_FRAME_BYTES, PATH, STRIKES, LinkClient, LinkServer, Peer, Verdict
from node.link_crypto import CHUNK, LinkKey, handshake_state, prologue, seal, unseal
from node.link_socket import _Socket
from node.messages import pack
from node.server import uvicorn_config
from shardnet.errors import PeerError
from tests.conftest import free_port

CHAIN, MARKET = 31337, "0x" + "ab" * 20
SENDER, RECEIVER, OTHER = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "33" * 20


class Refusals:
    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def __call__(self, reason: str) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1


class Receiver:
    """A node app on a free port whose link server records what it accepts."""

    def __init__(self, keys: dict[str, bytes], ws_max_size: int = MAX_FRAME_BYTES):
        self.key = _key()
        self.accepted: list[tuple[int, int, str, bytes]] = []
        self.refused = Refusals()
        self.server_side = LinkServer(RECEIVER, self.key, CHAIN, MARKET, keys.get, self.accept, self.refused)
        self.port = free_port()
        agent = SimpleNamespace(links_in=self.server_side, metrics=SimpleNamespace(refused=_Labels(self.refused)))
        config = uvicorn_config(agent, "127.0.0.1", self.port, ws_max_size)  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{self.port}"
        self.peer = Peer(RECEIVER, self.url, self.key.public)

    def accept(self, job_id: int, stage: int, sender: str, body: bytes, _timing: Any) -> Verdict | Awaitable[Verdict]:
        """Like the stage pipeline: a verdict at once, or (job 405) once a route had time to arrive."""
        if job_id == 404:
            return False, "job 404 has no route on-chain"
        if job_id == 405:
            return self._accept_later(job_id, stage, sender, body)
        self.accepted.append((job_id, stage, sender, body))
        return True, ""

    async def _accept_later(self, job_id: int, stage: int, sender: str, body: bytes) -> Verdict:
        await asyncio.sleep(0.2)
        self.accepted.append((job_id, stage, sender, body))
        return True, ""

    async def __aenter__(self) -> Receiver:
        self.task = asyncio.create_task(self.server.serve())
        while not self.server.started:
            await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        await self.task


class _Labels:
    def __init__(self, refused: Refusals):
        self.refused = refused

    def labels(self, reason: str) -> SimpleNamespace:
        return SimpleNamespace(inc=lambda: self.refused(reason))


def _key() -> LinkKey:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

    return LinkKey(X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption()))


def _client(key: LinkKey, address: str = SENDER) -> LinkClient:
    return LinkClient(address, key, CHAIN, MARKET, timeout_s=5, retries=0, ban_s=0)


async def _raw_session(url: str, key: LinkKey, remote: bytes, address: str = SENDER):
    """A hand-driven link (to send what a node's client never would); returns (ws, noise, msg1)."""
    session = aiohttp.ClientSession()
    ws = await session.ws_connect(url.replace("http", "ws") + PATH)
    noise = handshake_state(prologue(CHAIN, MARKET), key, remote=remote)
    first = bytes(noise.write_message(address.encode()))
    await ws.send_bytes(first)
    noise.read_message((await ws.receive()).data)
    return session, ws, noise, first


def _frame(frame_id: int, job: int = 1, stage: int = 1, to: str = RECEIVER, body: bytes = b"m") -> bytes:
    return pack({"id": frame_id, "chain": CHAIN, "job": job, "stage": stage, "to": to}, body)


async def _closed(ws: aiohttp.ClientWebSocketResponse) -> int | None:
    message = await asyncio.wait_for(ws.receive(), 5)
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
    return ws.close_code


@pytest.mark.asyncio
async def test_frames_arrive_in_order_from_the_node_the_chain_names_and_large_ones_are_chunked():
    mine = _key()
    async with Receiver({SENDER: mine.public}) as rx:
        client = _client(mine)
        big = bytes(range(256)) * (3 << 12)  # 3 MiB: about 48 Noise messages
        for body in [b"a", big, b"c"]:
            await client.send(rx.peer, 7, 1, body)
        assert [(j, s, who, b) for j, s, who, b in rx.accepted] == [(7, 1, SENDER, b) for b in [b"a", big, b"c"]]
        assert len(client.links) == 1  # one persistent link carried them all
        with pytest.raises(PeerError, match="has no route"):  # the pipeline's refusal comes back with its reason
            await client.send(rx.peer, 404, 1, b"x")
        await client.close()


@pytest.mark.asyncio
async def test_a_post_returns_once_written_and_its_task_once_the_peer_answered_in_order():
    """A frame the receiver decides on later holds back the frames behind it on that link, so
    they are queued in the order sent; a posted frame's refusal comes back through its task."""
    mine = _key()
    async with Receiver({SENDER: mine.public}) as rx:
        client = _client(mine)
        await client.send(rx.peer, 7, 1, b"open")  # the link is up
        slow = await client.post(rx.peer, 405, 1, b"waits for its route")
        fast = await client.post(rx.peer, 7, 1, b"decided at once")
        refused = await client.post(rx.peer, 404, 1, b"no route")
        assert not slow.done() and not fast.done()  # written, not yet answered
        await asyncio.wait_for(asyncio.gather(slow, fast), 5)
        with pytest.raises(PeerError, match="has no route"):
            await refused
        assert [body for *_, body in rx.accepted] == [b"open", b"waits for its route", b"decided at once"]
        assert rx.refused.counts == {"not-on-route": 1}
        await client.close()


@pytest.mark.asyncio
async def test_a_key_the_chain_does_not_hold_and_a_keyless_peer_are_refused():
    mine, impostor = _key(), _key()
    async with Receiver({SENDER: mine.public}) as rx:
        with pytest.raises(PeerError, match="refused the link"):  # right address, wrong key
            await _client(impostor).send(rx.peer, 1, 1, b"x")
        with pytest.raises(PeerError, match="refused the link"):  # an address with no key on-chain
            await _client(mine, OTHER).send(rx.peer, 1, 1, b"x")
        async with aiohttp.ClientSession() as session:  # no Noise at all
            ws = await session.ws_connect(rx.url.replace("http", "ws") + PATH)
            await ws.send_bytes(b"GET /secrets please")
            assert await _closed(ws) == 1008
        with pytest.raises(PeerError, match="refused the link"):  # sealed to another key than the receiver's
            await _client(mine).send(Peer(RECEIVER, rx.url, _key().public), 1, 1, b"x")
        assert rx.accepted == [] and rx.refused.counts["bad-handshake"] == 4, rx.refused.counts


@pytest.mark.asyncio
async def test_wrong_recipient_replayed_reordered_and_truncated_frames_are_refused():
    mine = _key()
    async with Receiver({SENDER: mine.public}) as rx:
        session, ws, noise, _ = await _raw_session(rx.url, mine, rx.key.public)
        await ws.send_bytes(seal(noise, _frame(1, to=OTHER)))  # for another node: refused, link stays
        assert (await ws.receive()).type == aiohttp.WSMsgType.BINARY
        assert rx.accepted == [] and rx.refused.counts == {"wrong-recipient": 1}
        sealed = seal(noise, _frame(2))
        await ws.send_bytes(sealed)
        await ws.receive()
        await ws.send_bytes(sealed)  # the same frame again: its nonce is spent
        assert await _closed(ws) == 1008
        assert len(rx.accepted) == 1
        await session.close()

        session, ws, noise, _ = await _raw_session(rx.url, mine, rx.key.public)
        seal(noise, _frame(3))  # sealed, never sent...
        await ws.send_bytes(seal(noise, _frame(4)))  # ...so this one arrives out of order
        assert await _closed(ws) == 1008
        await session.close()

        session, ws, noise, _ = await _raw_session(rx.url, mine, rx.key.public)
        await ws.send_bytes(seal(noise, _frame(5))[:-3])  # truncated
        assert await _closed(ws) == 1008
        await session.close()
        assert len(rx.accepted) == 1 and rx.refused.counts["bad-frame"] == 3


@pytest.mark.asyncio
async def test_a_recorded_session_replayed_whole_delivers_nothing():
    mine = _key()
    async with Receiver({SENDER: mine.public}) as rx:
        session, ws, noise, first = await _raw_session(rx.url, mine, rx.key.public)
        frame = seal(noise, _frame(1))
        await ws.send_bytes(frame)
        await ws.receive()
        await session.close()
        assert len(rx.accepted) == 1
        async with aiohttp.ClientSession() as again:  # an eavesdropper resends both messages
            ws = await again.ws_connect(rx.url.replace("http", "ws") + PATH)
            await ws.send_bytes(first)
            await ws.receive()  # the receiver answers with a fresh ephemeral key...
            await ws.send_bytes(frame)  # ...so the recorded frame no longer decrypts
            assert await _closed(ws) == 1008
        assert len(rx.accepted) == 1


@pytest.mark.asyncio
async def test_an_oversize_frame_is_refused_from_its_length_and_repeated_garbage_bans_the_sender():
    mine = _key()
    async with Receiver({SENDER: mine.public}, ws_max_size=1 << 20) as rx:
        session, ws, noise, _ = await _raw_session(rx.url, mine, rx.key.public)
        await ws.send_bytes(seal(noise, _frame(1, body=b"\0" * (2 << 20))))
        assert await _closed(ws) == 1009  # message too big: refused before it is read
        await session.close()
        session, ws, noise, _ = await _raw_session(rx.url, mine, rx.key.public)
        await ws.send_bytes(b"\x00\x00\x00\x00")  # does not decrypt: refused, but no strike (a replay could)
        assert await _closed(ws) == 1008
        await session.close()
        for _ in range(STRIKES):  # well sealed, so surely from the sender, and malformed: strikes
            session, ws, noise, _ = await _raw_session(rx.url, mine, rx.key.public)
            await ws.send_bytes(seal(noise, b"\xff\xff\xff\xff not a message"))
            assert await _closed(ws) == 1008
            await session.close()
        with pytest.raises(PeerError, match="refused the link"):
            await _client(mine).send(rx.peer, 1, 1, b"x")
        assert rx.accepted == [] and rx.refused.counts["malformed-frame"] == STRIKES


def _sessions() -> tuple[Any, Any]:
    """A Noise session's two ends, handshake done (sender, receiver)."""
    a, b = _key(), _key()
    sender, receiver = (
        handshake_state(prologue(CHAIN, MARKET), a, remote=b.public),
        handshake_state(prologue(CHAIN, MARKET), b),
    )
    receiver.read_message(sender.write_message(b"hello"))
    sender.read_message(receiver.write_message(b""))
    return sender, receiver


def test_sealed_frames_of_one_chunk_or_many_open_only_whole_and_in_order():
    """Without sockets: a frame of one chunk (a decode step's) or many opens to what was sealed,
    and is refused cut short, padded, forged or out of order (each on a fresh session: a link
    closes after a frame that does not open, its nonces out of step)."""
    for size in (0, 1, 3000, CHUNK, CHUNK + 1, 2 * CHUNK + 5):
        plain = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
        sender, receiver = _sessions()
        sealed = seal(sender, plain)
        assert len(sealed) == size + 20 * max(1, -(-size // CHUNK))  # a length and a tag per chunk
        assert unseal(receiver, sealed) == plain
        for bad in (
            lambda f: f[:-1],
            lambda f: f + b"\0",
            lambda f: f[:4] + bytes([f[4] ^ 1]) + f[5:],
            lambda f: f[:3],
        ):
            sender, receiver = _sessions()
            with pytest.raises(ValueError):
                unseal(receiver, bad(seal(sender, plain)))
    sender, receiver = _sessions()
    skipped, later = seal(sender, b"first"), seal(sender, b"second")
    with pytest.raises(ValueError, match="replayed, reordered or forged"):
        unseal(receiver, later)
    assert unseal(receiver, skipped) == b"first"
    assert unseal(receiver, later) == b"second"
    with pytest.raises(ValueError, match="replayed, reordered or forged"):
        unseal(receiver, later)


class _Recorder(_Socket):
    """A link socket's receiving half without a connection: records the messages it takes."""

    def __init__(self, ws: Any):
        super().__init__(ws)
        self.messages: list[bytes] = []

    def on_message(self, message: bytes) -> None:
        self.messages.append(message)


def _open_pair(max_size: int = 1 << 20) -> tuple[ClientProtocol, ServerProtocol]:
    """A WebSocket client and server protocol, their handshake done (no sockets)."""
    client, server = ClientProtocol(parse_uri("ws://127.0.0.1:1" + PATH)), ServerProtocol(max_size=max_size)
    client.send_request(client.connect())
    for data in client.data_to_send():
        server.receive_data(data)
    server.send_response(server.accept(server.events_received()[0]))
    for data in server.data_to_send():
        client.receive_data(data)
    client.events_received()
    return client, server


def _frames(client: ClientProtocol, *messages: bytes, fragment: bool = False) -> bytes:
    for message in messages:
        if fragment:
            client.send_binary(message[:3], fin=False)
            client.send_continuation(message[3:], fin=True)
        else:
            client.send_binary(message)
    return b"".join(client.data_to_send())


@pytest.mark.asyncio
async def test_a_whole_message_in_one_frame_is_read_at_once_and_anything_else_by_the_protocol():
    """A frame that is exactly one binary message (each decode step's) is read without the
    protocol's parser, to the same bytes; two frames in one read, a frame split across reads (even
    where the rest looks like a whole frame), a fragmented message and a frame over the size limit
    go through the parser, with its checks."""
    for size in (1, 125, 126, 65535, 65536, 70000):
        client, server = _open_pair()
        sock = _Recorder(server)
        server.receive_data = None  # type: ignore[method-assign]  # the parser must not be needed
        message = bytes(range(256)) * (size // 256) + b"m" * (size % 256)
        sock.data_received(_frames(client, message))
        assert sock.messages == [message]

    client, server = _open_pair()
    sock = _Recorder(server)
    joined = _frames(client, b"first", b"second")
    sock.data_received(joined[:4])  # cut inside the first frame's mask
    sock.data_received(joined[4:])  # the rest of it, and the whole second frame
    sock.data_received(_frames(client, b"third"))
    sock.data_received(_frames(client, b"fragmented", fragment=True))
    sock.data_received(_frames(client, b"fourth"))
    assert sock.messages == [b"first", b"second", b"third", b"fragmented", b"fourth"]

    client, server = _open_pair()
    sock = _Recorder(server)
    inner = bytes([0x82, 0x80 | 5]) + b"MASK" + b"abcde"  # a payload that looks like a whole frame...
    sock.data_received(bytes([0x82, 0x80 | len(inner)]) + b"mask")  # ...after a header read alone
    sock.data_received(inner)
    sock.data_received(_frames(client, b"after"))
    assert sock.messages == [bytes(b ^ m for b, m in zip(inner, b"mask" * 3, strict=False)), b"after"]

    client, server = _open_pair(max_size=1000)
    sock = _Recorder(server)
    sock.data_received(_frames(client, b"x" * 1001))
    assert sock.messages == [] and server.close_sent is not None and server.close_sent.code == 1009


@pytest.mark.asyncio
async def test_a_banned_peer_that_is_back_gets_the_next_frame_and_the_ban_is_lifted():
    """A peer that failed every try (restarting, say) is banned; once it listens again, the next
    frame for it is sent (one try, no retries) rather than refused for the ban alone: a job routed
    through a node that came back must not fail because an earlier one saw it down."""
    mine = _key()
    rx = Receiver({SENDER: mine.public})
    client = LinkClient(SENDER, mine, CHAIN, MARKET, timeout_s=2, retries=1, ban_s=60)
    with pytest.raises(PeerError, match="failed 2 times"):  # nobody listens yet
        await client.send(rx.peer, 7, 1, b"a")
    assert RECEIVER in client.banned_until
    with pytest.raises(PeerError, match="still fails"):  # banned: one try, and it fails again
        await client.send(rx.peer, 7, 1, b"a")
    async with rx:
        await client.send(rx.peer, 7, 1, b"b")
        assert [b for *_, b in rx.accepted] == [b"b"]
        assert RECEIVER not in client.banned_until
        await client.close()
