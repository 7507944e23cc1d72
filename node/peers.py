"""Peer client: signed requests to other stages, bounded retries with backoff, and a ban on a
peer that keeps failing."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
from eth_account.signers.local import LocalAccount

from node.signing import sign_request
from shardnet.errors import ShardnetError

log = logging.getLogger("shardnet.node.peers")


class PeerError(ShardnetError):
    pass


class PeerClient:
    def __init__(self, account: LocalAccount, timeout_s: float, retries: int, ban_s: float = 30.0):
        self.account = account
        self.retries = retries
        self.ban_s = ban_s
        self.banned_until: dict[str, float] = {}
        self.http = httpx.AsyncClient(timeout=timeout_s)

    async def close(self) -> None:
        await self.http.aclose()

    async def post(self, base_url: str, path: str, body: bytes) -> httpx.Response:
        if self.banned_until.get(base_url, 0) > time.monotonic():
            raise PeerError(f"peer {base_url} is banned for failing repeatedly; retry later")
        headers = sign_request(self.account, path, body)
        delay = 0.5
        for attempt in range(self.retries + 1):
            try:
                response = await self.http.post(base_url.rstrip("/") + path, content=body, headers=headers)
                if response.status_code < 500:
                    if response.status_code >= 400:
                        raise PeerError(f"{base_url}{path} refused the request ({response.status_code}): "
                                        f"{response.text[:200]}")
                    return response
                reason = f"HTTP {response.status_code}"
            except httpx.HTTPError as exc:
                reason = type(exc).__name__
            if attempt < self.retries:
                log.warning("peer %s%s failed (%s), retry %d in %.1f s", base_url, path, reason, attempt + 1, delay)
                await asyncio.sleep(delay)
                delay *= 2
        self.banned_until[base_url] = time.monotonic() + self.ban_s
        raise PeerError(f"peer {base_url} failed {self.retries + 1} times ({reason}); banned for {self.ban_s:.0f} s")
