"""Peer client: signed requests to other stages, bounded retries with backoff, and a ban on a
peer that keeps failing.

aiohttp rather than httpx here: a request on a kept-alive loopback connection takes about a
quarter of the time, and every token of a generation crosses one request per stage.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
from eth_account.signers.local import LocalAccount

from shardnet.errors import PeerError
from shardnet.signing import sign_request

log = logging.getLogger("shardnet.node.peers")


@dataclass(frozen=True)
class PeerResponse:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class PeerClient:
    def __init__(self, account: LocalAccount, timeout_s: float, retries: int, ban_s: float = 30.0):
        self.account = account
        self.retries = retries
        self.ban_s = ban_s
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.banned_until: dict[str, float] = {}
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def post(self, base_url: str, path: str, body: bytes, sent: asyncio.Event | None = None) -> PeerResponse:
        """POST a signed request, retried with backoff. `sent`, if given, is set once the request
        is written out (or has failed), for a caller that wants it on the wire before holding
        the event loop with work of its own."""
        # a banned peer (it failed every try lately) is tried once, without retries: it may be
        # back (restarted), and a request routed to it then must not fail for the ban alone
        banned = self.banned_until.get(base_url, 0) > time.monotonic()
        tries = 1 if banned else self.retries + 1
        if self._session is None:
            trace = aiohttp.TraceConfig()
            for signal in (trace.on_request_chunk_sent, trace.on_request_end, trace.on_request_exception):
                signal.append(_mark_sent)
            self._session = aiohttp.ClientSession(timeout=self.timeout, trace_configs=[trace])
        headers = {**sign_request(self.account, path, body), "content-type": "application/octet-stream"}
        delay = 0.25
        context = {"sent": sent}
        for attempt in range(tries):
            try:
                async with self._session.post(
                    base_url.rstrip("/") + path, data=body, headers=headers, trace_request_ctx=context
                ) as response:
                    reply = PeerResponse(response.status, await response.read())
                if reply.status < 500:
                    self.banned_until.pop(base_url, None)  # it answers
                    if reply.status >= 400:
                        raise PeerError(
                            f"{base_url}{path} refused the request ({reply.status}): "
                            f"{reply.body[:200].decode(errors='replace')}"
                        )
                    return reply
                reason = f"HTTP {reply.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                reason = type(exc).__name__
            if attempt < tries - 1:
                log.warning("peer %s%s failed (%s), retry %d in %.1f s", base_url, path, reason, attempt + 1, delay)
                await asyncio.sleep(delay)
                delay *= 2
        self.banned_until[base_url] = time.monotonic() + self.ban_s
        failed = "still fails" if banned else f"failed {tries} times"
        raise PeerError(f"peer {base_url} {failed} ({reason}); banned for {self.ban_s:.0f} s")


async def _mark_sent(session: aiohttp.ClientSession, context: Any, params: Any) -> None:
    """aiohttp trace hook: a request's body was written (or the request ended or failed)."""
    sent = (context.trace_request_ctx or {}).get("sent")
    if isinstance(sent, asyncio.Event):
        sent.set()
