"""Links: one persistent, encrypted, mutually authenticated stream between each pair of
neighbouring nodes, carrying every job's activations and tokens as binary frames.

Transport: a WebSocket on the node's own port (`/v1/link`). It is message-framed and binary, it
bounds a frame by its declared length before reading it (the server's `ws_max_size`), a sender's
`send` waits while the peer is not reading (back-pressure), and it crosses the proxies and load
balancers an operator already runs for HTTP. A raw TCP or QUIC stream would need our own
framing, or a dependency the rest of the stack does not use. Both ends are written on the
`websockets` library's sans-IO protocol straight over asyncio transports (node.link_socket), so
a frame is written, and one that arrives is queued for its stage, without a task switch.

Security: the Noise protocol framework (`Noise_IK_25519_ChaChaPoly_SHA256`, via the maintained
`noiseprotocol` package on `cryptography`). Each node keeps an X25519 key in its state folder and
registers its public half on-chain as its `dataKey`. The sender knows the receiver's key from the
chain (IK: the receiver is authenticated by the handshake itself); the receiver learns the
sender's key from the handshake and accepts it only if it is the key the chain holds for the node
address the sender names. The handshake's prologue binds the session to the chain id and the
market, and every frame names its chain, job, stage and recipient; the pipeline accepts a job's
frame only from the stage the job's current on-chain route puts before this one, and drops a
step it has already processed. Within a session, Noise's counter nonces refuse a replayed,
reordered or truncated frame; a replayed session gets fresh keys from the receiver's new
ephemeral key, so none of its old frames decrypt.

Frame (after decryption): the `node.messages` format, header `{"id", "chain", "job", "stage",
"to"}` (and `timing`, for a step just computed: node.pipeline.count_hop) and the stage message
as payload; the receiver answers each frame with
`{"ack": id, "ok": bool, "error"?}`. A send completes when the receiver queued the message; a
post (a generation's step, whose next message can only follow the peer's answer) completes when
the frame is written, and its task when the ack came.
Noise messages are at most 65,535 bytes, so a frame is sealed in chunks, each prefixed by its
4-byte length. The key, the Noise session and the sealing are in node.link_crypto.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple

from noise.connection import NoiseConnection

from node.link_crypto import NOISE_ERRORS, LinkKey, handshake_state, prologue, seal, unseal
from node.link_socket import PATH, LinkSocket
from node.messages import pack, unpack
from shardnet.errors import PeerError

log = logging.getLogger("shardnet.node.link")

MAX_FRAME_BYTES = (64 << 20) + (1 << 20)  # one activation message (see node.server) and its chunking
HANDSHAKE_BYTES = 4096
STRIKES = 5  # malformed or misaddressed frames from one node before its links are refused for BAN_S
BAN_S = 60.0

Verdict = tuple[bool, str]  # (accepted, why not)
# the stage pipeline's verdict on a frame: at once, or once it could wait (for a route to arrive)
# (job, stage, sender, message, the frame's timing or None)
Accept = Callable[[int, int, str, bytes, Any], Verdict | Awaitable[Verdict]]


class _Link:
    """One open session to a peer: sends frames, matches acks to them."""

    def __init__(self, sock: LinkSocket, noise: NoiseConnection):
        self.sock = sock
        self.noise = noise
        self.waiting: dict[int, asyncio.Future[Verdict]] = {}  # frame id -> its ack
        sock.listener = self._acked
        sock.lost.add_done_callback(lambda _: self.fail(ConnectionError("link closed")))

    def _acked(self, message: bytes) -> None:
        """An ack from the receiver (called as it arrives, in the socket's data_received)."""
        try:
            header, _ = unpack(unseal(self.noise, message))
            future = self.waiting.pop(int(header["ack"]), None)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("link to %s: bad ack (%s); closing it", self.sock.peer, exc)
            self.sock.abort()
            self.fail(ConnectionError(f"bad ack: {exc}"))
            return
        if future is not None and not future.done():
            future.set_result((bool(header.get("ok")), str(header.get("error", ""))))

    def fail(self, exc: Exception) -> None:
        for future in self.waiting.values():
            if not future.done():
                future.set_exception(exc)
        self.waiting.clear()

    @property
    def closed(self) -> bool:
        return self.sock.closed

    def write(self, frame_id: int, frame: bytes) -> asyncio.Future[Verdict] | None:
        """Seal and write a frame now (encryption order is write order); the future is its ack.
        None when the link cannot take it now: closed, or its buffer over the high-water mark
        (back-pressure: the sender waits for the ack of a frame it wrote, so a link's writes stay
        bounded by what its senders have in flight)."""
        if self.sock.closed or not self.sock.writable.is_set():
            return None
        future: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()
        self.waiting[frame_id] = future
        self.sock.send(seal(self.noise, frame))
        return future

    async def close(self) -> None:
        await self.sock.close()


class Peer(NamedTuple):
    """A node a link goes to: its address, its endpoint and the link key the chain holds for it."""

    node: str
    endpoint: str
    data_key: bytes


class LinkClient:
    """Sends stage messages to other nodes over links, one per peer, opened on first use and
    reopened after a failure; bounded retries with backoff, then the peer is banned a while."""

    def __init__(
        self,
        address: str,
        key: LinkKey,
        chain_id: int,
        market: str,
        timeout_s: float,
        retries: int,
        ban_s: float = 30.0,
    ):
        self.address = address
        self.key = key
        self.chain_id = chain_id
        self.prologue = prologue(chain_id, market)
        self.timeout_s = timeout_s
        self.retries = retries
        self.ban_s = ban_s
        self.links: dict[str, _Link] = {}
        self.banned_until: dict[str, float] = {}
        self._ids = itertools.count(1)
        self._opening: dict[str, asyncio.Lock] = {}
        self._delivering: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        for task in list(self._delivering):
            task.cancel()
        for link in list(self.links.values()):
            await link.close()

    async def _open(self, peer: Peer) -> _Link:
        node, key = peer.node, peer.data_key
        async with self._opening.setdefault(node, asyncio.Lock()):
            link = self.links.get(node)
            if link is not None and not link.closed:
                return link
            if len(key) != 32:
                raise PeerError(f"node {node} has no link key on-chain (its dataKey is {len(key)} bytes, not 32)")
            url = peer.endpoint.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1) + PATH
            sock = await LinkSocket.connect(url, self.timeout_s)
            noise = handshake_state(self.prologue, self.key, remote=key)
            sock.send(bytes(noise.write_message(self.address.encode())))
            try:
                reply = await sock.receive(self.timeout_s)
            except ConnectionError as exc:
                await sock.close()
                raise PeerError(f"node {node} refused the link: {exc}") from None
            except TimeoutError:
                await sock.close()
                raise
            try:
                noise.read_message(reply)
            except NOISE_ERRORS:
                await sock.close()
                raise PeerError(f"node {node} did not prove the key the chain holds for it") from None
            link = self.links[node] = _Link(sock, noise)
            return link

    async def send(
        self, peer: Peer, job_id: int, stage: int, body: bytes, timing: dict[str, Any] | None = None
    ) -> None:
        """Deliver a stage message to `peer` (stage `stage` of job `job_id`); returns when the
        peer queued it. PeerError when it refused it, or failed `retries + 1` times. `timing`
        goes in the frame's header, beside the message (node.pipeline.count_hop)."""
        await (await self.post(peer, job_id, stage, body, timing))

    async def post(
        self, peer: Peer, job_id: int, stage: int, body: bytes, timing: dict[str, Any] | None = None
    ) -> asyncio.Task[None]:
        """Like `send`, but returns as soon as the message is written to an open link (one is
        opened first if need be): the task it returns ends when the peer queued the message, or
        raises what `send` would. A stage whose next message can only follow the peer's answer
        goes on at once, without waiting for the ack's round trip."""
        frame_id, node = next(self._ids), peer.node
        header: dict[str, Any] = {"id": frame_id, "chain": self.chain_id, "job": job_id, "stage": stage, "to": node}
        if timing is not None:
            header["timing"] = timing
        frame = pack(header, body)
        link = self.links.get(node)
        acked = written = None
        if link is not None and self.banned_until.get(node, 0) <= time.monotonic():
            acked = link.write(frame_id, frame)
        if acked is None:
            written = asyncio.get_running_loop().create_future()
        task = asyncio.ensure_future(self._deliver(peer, job_id, stage, frame_id, frame, acked, written))
        self._delivering.add(task)
        task.add_done_callback(self._delivering.discard)
        if written is not None:  # (opening a link first): written, or failed, before this returns
            await asyncio.wait([written, task], return_when=asyncio.FIRST_COMPLETED)
        return task

    async def _write(self, peer: Peer, frame_id: int, frame: bytes) -> asyncio.Future[Verdict]:
        """Write a frame on the link to `peer` (opened if need be, waited on while it is over its
        high-water mark); its ack's future."""
        while True:
            link = self.links.get(peer.node)
            if link is None or link.closed:
                link = await self._open(peer)
            acked = link.write(frame_id, frame)
            if acked is not None:
                return acked
            if link.closed:
                raise ConnectionError("link closed")
            await link.sock.wait_writable()

    async def _deliver(
        self,
        peer: Peer,
        job_id: int,
        stage: int,
        frame_id: int,
        frame: bytes,
        acked: asyncio.Future[Verdict] | None,
        written: asyncio.Future[None] | None = None,
    ) -> None:
        """Until the peer answers: its ack for a frame already written (`acked`), else (re)send;
        `written` is set once the frame is written."""
        node = peer.node
        # a banned peer (it failed every try lately) is tried once, without retries: it may be
        # back (restarted), and a job routed through it then must not fail for the ban alone
        banned = self.banned_until.get(node, 0) > time.monotonic()
        tries = 1 if banned else self.retries + 1
        delay, reason = 0.25, ""
        for attempt in range(tries):
            try:
                if acked is None:
                    acked = await asyncio.wait_for(self._write(peer, frame_id, frame), self.timeout_s)
                if written is not None and not written.done():
                    written.set_result(None)
                ok, error = await asyncio.wait_for(acked, self.timeout_s)
                if banned:
                    self.banned_until.pop(node, None)  # it answers
                if not ok:
                    raise PeerError(f"node {node} refused the message for job {job_id} stage {stage}: {error}")
                return
            except (TimeoutError, ConnectionError) as exc:
                acked = None
                reason = f"{type(exc).__name__} {exc}".strip()
                stale = self.links.pop(node, None)
                if stale is not None:
                    await stale.close()
            if attempt < tries - 1:
                log.warning("link to %s failed (%s), retry %d in %.1f s", node, reason, attempt + 1, delay)
                await asyncio.sleep(delay)
                delay *= 2
        self.banned_until[node] = time.monotonic() + self.ban_s
        failed = "still fails" if banned else f"failed {tries} times"
        raise PeerError(f"peer {node} {failed} ({reason}); banned for {self.ban_s:.0f} s")


class LinkServer:
    """The receiving end: authenticates each link against the chain, then hands every frame
    that names this node, this chain and a job to `accept` (the stage pipeline), in order."""

    def __init__(
        self,
        address: str,
        key: LinkKey,
        chain_id: int,
        market: str,
        data_keys: Callable[[str], bytes | None],
        accept: Accept,
        refused: Callable[[str], None],
    ):
        self.address = address
        self.key = key
        self.chain_id = chain_id
        self.prologue = prologue(chain_id, market)
        self.data_keys = data_keys  # node address -> its dataKey on-chain
        self.accept = accept
        self.refused = refused  # counts a refusal by reason (metrics)
        self.strikes: dict[str, int] = {}
        self.banned_until: dict[str, float] = {}

    def strike(self, node: str, reason: str) -> None:
        """A frame that decrypted (so its sender holds the key) but is malformed or misaddressed
        counts against that node; enough of them and its links are refused for a while."""
        self.refused(reason)
        self.strikes[node] = self.strikes.get(node, 0) + 1
        if self.strikes[node] >= STRIKES:
            self.banned_until[node], self.strikes[node] = time.monotonic() + BAN_S, 0
            log.warning("links from %s refused for %.0f s: %d malformed frames", node, BAN_S, STRIKES)

    def handshake(self, message: bytes) -> tuple[NoiseConnection, str, bytes] | str:
        """The session, the sender's node address and the reply; or why the link is refused."""
        if len(message) > HANDSHAKE_BYTES:
            return "handshake too large"
        noise = handshake_state(self.prologue, self.key)
        try:
            claimed = bytes(noise.read_message(message)).decode()
        except (*NOISE_ERRORS, UnicodeDecodeError):
            return "handshake does not decrypt (not for this node's key, or another deployment)"
        remote = noise.noise_protocol.handshake_state.rs.public_bytes
        registered = self.data_keys(claimed)
        if registered is None or registered != remote:
            return f"the handshake's key is not the one the chain holds for {claimed[:42]}"
        if self.banned_until.get(claimed, 0) > time.monotonic():
            return f"links from {claimed} are refused for a while: too many malformed frames"
        return noise, claimed, bytes(noise.write_message(b""))

    def frame(self, noise: NoiseConnection, sender: str, data: bytes) -> bytes | None | Awaitable[bytes | None]:
        """Handle one sealed frame: the ack to send back (to `seal` on this session: the caller
        does, once the stage the frame woke has started), or None if the link must close (a frame
        that does not decrypt leaves the session's nonces out of step). The ack comes at once
        when the pipeline decides at once (a decode step's usual case), else as an awaitable."""
        try:
            plaintext = unseal(noise, data)
        except ValueError as exc:  # no strike: a replayed or forged frame need not come from `sender`
            self.refused("bad-frame")
            log.warning("link from %s: %s; closing it", sender, exc)
            return None
        try:  # it decrypted, so `sender` sent it: a malformed one counts against it
            header, body = unpack(plaintext)
        except ValueError as exc:
            self.strike(sender, "malformed-frame")
            log.warning("link from %s: malformed frame (%s); closing it", sender, exc)
            return None
        frame_id = header.get("id")
        if not isinstance(frame_id, int):
            self.strike(sender, "malformed-frame")
            return None
        job_id, stage = header.get("job"), header.get("stage")
        if header.get("chain") != self.chain_id or str(header.get("to", "")).lower() != self.address.lower():
            self.strike(sender, "wrong-recipient")
            return _ack(
                frame_id, False, f"frame is for {header.get('to')} on chain {header.get('chain')}, not this node"
            )
        if not isinstance(job_id, int) or not isinstance(stage, int) or isinstance(job_id, bool):
            self.strike(sender, "malformed-frame")
            return _ack(frame_id, False, "frame names no job and stage")
        verdict = self.accept(job_id, stage, sender, body, header.get("timing"))
        if isinstance(verdict, tuple):
            return self._answer(frame_id, verdict)
        return self._answer_later(frame_id, verdict)

    async def _answer_later(self, frame_id: int, verdict: Awaitable[Verdict]) -> bytes:
        return self._answer(frame_id, await verdict)

    def _answer(self, frame_id: int, verdict: Verdict) -> bytes:
        if not verdict[0]:
            self.refused("not-on-route")
        return _ack(frame_id, *verdict)


def _ack(frame_id: int, ok: bool, error: str = "") -> bytes:
    return pack({"ack": frame_id, "ok": ok} | ({} if ok else {"error": error}))
