"""The WebSocket under a link (node.link), both ends written on the `websockets` library's sans-IO
protocol straight over asyncio transports.

A link carries one small frame per token per hop, so what a frame costs outside the span's
compute is on every generation's critical path, and on a node that path runs with cold caches
(its turn comes once per token). Here a frame is sealed and written in one synchronous call, and
one that arrives is decided in the transport's own `data_received`: the link server checks it
and the stage pipeline queues it there and then (node.pipeline.accept), so the stage starts on
the next turn of the event loop, and the ack goes out after it. Through an ASGI route (uvicorn,
Starlette) and aiohttp's client, each message also went through the libraries' own queues and
tasks. Timed in a node on `llama-512`, a frame's arrival to its stage's compute went from about
0.50 to 0.32 ms, together with the sender not waiting for acks (node.link.LinkClient.post). The
wire is unchanged, a WebSocket on the node's own port, so links still cross the proxies and load
balancers an operator runs for HTTP.

The receiving end is uvicorn's WebSocket protocol for the node's port (its `ws` setting): uvicorn
parses the HTTP request and hands an upgrade over; this class answers it (only on `/v1/link`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from collections import deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, cast

from websockets.client import ClientProtocol
from websockets.exceptions import InvalidURI
from websockets.frames import Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Protocol, Side, State
from websockets.server import ServerProtocol
from websockets.uri import parse_uri

try:  # (what the library's own frame parser uses)
    from websockets.speedups import apply_mask
except ImportError:  # a build without its C extension
    from websockets.utils import apply_mask

if TYPE_CHECKING:
    from node.link import LinkServer

log = logging.getLogger("shardnet.node.link")

PATH = "/v1/link"
HANDSHAKE_TIMEOUT_S = 10.0  # from the TCP connection to a Noise-authenticated link
CLOSE_TIMEOUT_S = 2.0  # how long a closing side waits for the other to end the TCP connection
INBOX_FRAMES = 32  # frames received and not yet handled before the link stops reading (back-pressure)
ACK_MAX_BYTES = 64 << 10  # what a sender accepts from the receiver: handshake replies and acks
PING_INTERVAL_S = 20.0  # an idle link is pinged this often; no answer within as long closes it


class _Socket(asyncio.Protocol):
    """What both ends share: feeding bytes to the sans-IO protocol, writing what it wants sent,
    reassembling binary messages and closing the TCP connection when the protocol expects it."""

    def __init__(self, ws: Protocol):
        self.ws = ws
        self.transport: asyncio.Transport | None = None
        self.writable = asyncio.Event()
        self.writable.set()
        self.lost = asyncio.get_running_loop().create_future()
        self._parts: list[bytes] = []
        self._close_timer: asyncio.TimerHandle | None = None

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # (uvloop's transports are not subclasses)

    def data_received(self, data: bytes) -> None:
        message = self._whole_message(data)
        if message is not None:
            self.on_message(message)
            return
        self.ws.receive_data(data)
        self._handle(self.ws.events_received())
        self.flush()

    def _whole_message(self, data: bytes) -> bytes | None:
        """The payload, when `data` is exactly one whole binary message in one frame arriving
        between messages on an open link (every decode step's frame, and its ack): read here in a
        few lines, where the protocol's parser goes through its stream reader and generators, a
        few dozen microseconds on a hop whose caches are cold. Else None, and the protocol parses
        `data` (anything else, split, joined or over the size limit, with its checks)."""
        ws = self.ws
        if len(data) < 6 or data[0] != 0x82 or ws.state is not State.OPEN or self._parts or ws.extensions:
            return None
        if not self._between_frames():
            return None
        masked = ws.side is Side.SERVER  # a client masks what it sends
        if bool(data[1] & 0x80) != masked:
            return None
        length, at = data[1] & 0x7F, 2
        if length == 126:
            (length,), at = struct.unpack_from("!H", data, 2), 4
        elif length == 127:
            (length,), at = struct.unpack_from("!Q", data, 2), 10
        limit = getattr(ws, "max_message_size", 0)  # (a release without it: the parser reads every frame)
        if at + 4 * masked + length != len(data) or (limit is not None and length > limit):
            return None
        return apply_mask(data[at + 4 :], data[at : at + 4]) if masked else data[at:]

    def _between_frames(self) -> bool:
        """Whether the protocol's parser waits for a new frame, and is not inside one whose
        header it has read (its reader is then empty too). Read from where its generators stand;
        a websockets release whose parser is built otherwise gives False: every frame is parsed."""
        waiting = getattr(self.ws, "parser", None)
        while getattr(waiting, "gi_yieldfrom", None) is not None:
            waiting = waiting.gi_yieldfrom  # type: ignore[union-attr]
        return getattr(waiting, "__qualname__", "") == "StreamReader.at_eof"

    def eof_received(self) -> bool | None:
        self.ws.receive_eof()
        self._handle(self.ws.events_received())
        self.flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.writable.set()  # wake anyone waiting to write: the write then finds the link closed
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self.lost.done():
            self.lost.set_result(None)

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    # both ends
    @property
    def closed(self) -> bool:
        return self.lost.done() or self.ws.state in (State.CLOSING, State.CLOSED)

    def flush(self) -> None:
        """Write what the protocol has to send; end the connection when it expects that."""
        if self.transport is None or self.transport.is_closing():
            return
        for data in self.ws.data_to_send():
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                self.transport.write_eof()
        if self.ws.close_expected() and self._close_timer is None:
            self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT_S, self.abort)

    def send(self, data: bytes) -> None:
        """Write one binary message now (ConnectionError when the link is closed)."""
        if self.closed:
            raise ConnectionError("link closed")
        self.ws.send_binary(data)
        self.flush()

    def fail(self, code: int, reason: str) -> None:
        """Close the link with a close frame saying why."""
        if self.ws.state is State.OPEN:
            self.ws.fail(code, reason[:120])
        self.flush()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _handle(self, events: list[Any]) -> None:
        for event in events:
            if not isinstance(event, Frame):
                self.on_handshake(event)
            elif event.opcode in (Opcode.BINARY, Opcode.CONT) and (event.opcode is Opcode.CONT) == bool(self._parts):
                self._parts.append(bytes(event.data))
                if event.fin:
                    message, self._parts = b"".join(self._parts), []
                    self.on_message(message)
            elif event.opcode is Opcode.TEXT or event.opcode in (Opcode.BINARY, Opcode.CONT):
                self.fail(1003, "links carry whole binary messages only")
            # ping, pong and close frames: the protocol answers them itself

    def on_handshake(self, event: Request | Response) -> None:
        raise NotImplementedError

    def on_message(self, message: bytes) -> None:
        raise NotImplementedError


class LinkSocketServer(_Socket):
    """The receiving end of one incoming link: uvicorn's WebSocket protocol on the node's port.
    The first message must be the sender's Noise handshake (node.link.LinkServer checks it against
    the chain); every later one is a sealed frame, handed to the link server in order, and
    answered with the ack it returns. A link that breaks the rules is closed with code 1008
    (1009 for a message over the size limit, from its declared length)."""

    links: LinkServer  # set by `server_protocol`

    def __init__(self, config: Any, server_state: Any, app_state: Any = None, **_: Any):
        super().__init__(ServerProtocol(max_size=config.ws_max_size, logger=log))
        self.connections: set[Any] = server_state.connections
        self.noise: Any = None
        self.sender = ""
        self.inbox: deque[bytes] = deque()
        self.worker: asyncio.Task[None] | None = None
        self._timeout: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.connections.add(self)
        self._timeout = asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT_S, self._handshake_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.connections.discard(self)
        if self._timeout is not None:
            self._timeout.cancel()
        self.inbox.clear()
        if self.worker is not None:
            self.worker.cancel()

    def shutdown(self) -> None:
        """uvicorn is stopping: the link goes away (code 1001); the sender opens a new one."""
        if self.ws.state is State.OPEN:
            self.ws.send_close(1001, "node shutting down")
            self.flush()
        self.abort()

    def _handshake_timeout(self) -> None:
        if self.noise is None:
            self.fail(1008, "no link handshake in time")

    def on_handshake(self, event: Request | Response) -> None:
        assert isinstance(self.ws, ServerProtocol) and isinstance(event, Request)
        if event.path.split("?", 1)[0] != PATH:
            response = self.ws.reject(404, f"this node's only WebSocket is {PATH}\n")
        else:
            response = self.ws.accept(event)
        self.ws.send_response(response)

    def on_message(self, message: bytes) -> None:
        if self.noise is None:
            self._authenticate(message)
        elif self.inbox or (self.worker is not None and not self.worker.done()):
            self.inbox.append(message)  # behind a frame the pipeline is still deciding on
            if len(self.inbox) >= INBOX_FRAMES and self.transport is not None:
                self.transport.pause_reading()  # the sender's writes back up until this link catches up
        else:
            self._take(message)

    def _take(self, message: bytes) -> None:
        """Hand a frame to the link server, here and now; its ack goes out once the stage the
        frame woke has started (that stage's task was woken first), so it is off the job's
        critical path. A frame the pipeline must wait on is finished by a task, in order."""
        answer = self._answer(message)
        if isinstance(answer, bytes):
            asyncio.get_running_loop().call_soon(self._send_ack, answer)
        elif answer is None:
            self._refuse()
        else:
            self.worker = asyncio.ensure_future(self._work(answer))

    def _answer(self, message: bytes) -> bytes | None | Awaitable[bytes | None]:
        try:
            return self.links.frame(self.noise, self.sender, message)
        except Exception:  # whatever a peer sends, the node keeps serving
            log.exception("link from %s: frame failed", self.sender)
            return None

    def _refuse(self) -> None:
        self.inbox.clear()
        self.fail(1008, "malformed frame")

    def _send_ack(self, ack: bytes) -> None:
        from node.link_crypto import seal

        if not self.closed:
            self.send(seal(self.noise, ack))

    async def _work(self, pending: Awaitable[bytes | None]) -> None:
        """Finish a frame the pipeline waits on, then the frames that queued behind it."""
        answer: bytes | None | Awaitable[bytes | None]
        while True:
            try:
                answer = await pending
            except Exception:  # whatever a peer sends, the node keeps serving
                log.exception("link from %s: frame failed", self.sender)
                answer = None
            while isinstance(answer, bytes):
                await asyncio.sleep(0)  # the stage the frame woke starts first
                self._send_ack(answer)
                if not self.inbox or self.closed:
                    return
                if len(self.inbox) < INBOX_FRAMES // 2 and self.transport is not None:
                    self.transport.resume_reading()
                answer = self._answer(self.inbox.popleft())
            if answer is None:
                self._refuse()
                return
            pending = answer

    def _authenticate(self, message: bytes) -> None:
        try:
            opened = self.links.handshake(message)
        except Exception as exc:  # whatever a peer sends, the node keeps serving
            log.exception("link handshake failed")
            opened = f"handshake failed: {type(exc).__name__}"
        if isinstance(opened, str):
            self.links.refused("bad-handshake")
            log.warning("link refused: %s", opened)
            self.fail(1008, opened)
            return
        self.noise, self.sender, reply = opened
        if self._timeout is not None:
            self._timeout.cancel()
        self.send(reply)


def server_protocol(links: LinkServer) -> type[asyncio.Protocol]:
    """uvicorn's `ws` setting for a node's port: its WebSocket upgrades become links into `links`."""
    return type("NodeLinkSocket", (LinkSocketServer,), {"links": links})


class LinkSocket(_Socket):
    """The sending end of a link: a WebSocket client connection. `send` writes at once; messages
    from the receiver go to `on_message`, or, until one is set, wait for `receive`."""

    def __init__(self, url: str):
        super().__init__(ClientProtocol(parse_uri(url), max_size=ACK_MAX_BYTES, logger=log))
        self.opened = asyncio.get_running_loop().create_future()
        self.received: asyncio.Queue[bytes] = asyncio.Queue()
        self.listener: Callable[[bytes], None] | None = None
        self._ping: asyncio.TimerHandle | None = None
        self._last_heard = 0.0

    @classmethod
    async def connect(cls, url: str, timeout_s: float) -> LinkSocket:
        """Open a WebSocket to `url` (ws:// or wss://). ConnectionError if it cannot be opened."""
        try:
            uri = parse_uri(url)
        except InvalidURI as exc:
            raise ConnectionError(f"not a link address: {url} ({exc})") from None
        context = ssl.create_default_context() if uri.secure else None
        loop = asyncio.get_running_loop()
        try:
            _, sock = await asyncio.wait_for(
                loop.create_connection(lambda: cls(url), uri.host, uri.port, ssl=context), timeout_s
            )
            sock.ws.send_request(sock.ws.connect())  # type: ignore[attr-defined]
            sock.flush()
            await asyncio.wait_for(asyncio.shield(sock.opened), timeout_s)
        except OSError as exc:
            raise ConnectionError(f"cannot connect to {url}: {exc}") from None
        sock._last_heard = loop.time()
        sock._ping = loop.call_later(PING_INTERVAL_S, sock._keepalive)
        return sock

    def data_received(self, data: bytes) -> None:
        self._last_heard = asyncio.get_running_loop().time()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._ping is not None:
            self._ping.cancel()
        if not self.opened.done():
            self.opened.set_exception(ConnectionError("connection closed during the WebSocket handshake"))
        self.received.put_nowait(b"")  # wakes a `receive`: the link is closed

    def on_handshake(self, event: Request | Response) -> None:
        if self.opened.done():
            return
        if self.ws.handshake_exc is not None:
            self.opened.set_exception(ConnectionError(f"WebSocket handshake refused: {self.ws.handshake_exc}"))
        else:
            self.opened.set_result(None)

    def on_message(self, message: bytes) -> None:
        if self.listener is not None:
            self.listener(message)
        else:
            self.received.put_nowait(message)

    async def receive(self, timeout_s: float) -> bytes:
        """The next message (before a listener is set). ConnectionError, saying why, once closed."""
        message = await asyncio.wait_for(self.received.get(), timeout_s)
        if not message and self.closed:
            close = self.ws.close_rcvd
            raise ConnectionError(f"{close.code} {close.reason}" if close is not None else "link closed")
        return message

    async def wait_writable(self) -> None:
        """Back-pressure: wait while the transport's buffer is over its high-water mark."""
        await self.writable.wait()

    def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        if self.closed:
            return
        if loop.time() - self._last_heard > 2 * PING_INTERVAL_S:
            log.warning("link to %s: no answer to a ping in %.0f s; closing it", self.peer, PING_INTERVAL_S)
            self.abort()
            return
        if loop.time() - self._last_heard >= PING_INTERVAL_S:
            self.ws.send_ping(b"")
            self.flush()
        self._ping = loop.call_later(PING_INTERVAL_S, self._keepalive)

    @property
    def peer(self) -> str:
        return str(self.transport.get_extra_info("peername")) if self.transport is not None else "?"

    async def close(self) -> None:
        if self._ping is not None:
            self._ping.cancel()
        if self.ws.state is State.OPEN:
            self.ws.send_close(1000)
            self.flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.lost), CLOSE_TIMEOUT_S)
        self.abort()
