"""The peer client (node.peers) against a real HTTP server on loopback: signed requests, and the
`sent` signal a last stage waits on before its final step holds the event loop."""

from __future__ import annotations

import asyncio

from aiohttp import web

from node.peers import PeerClient
from shardnet.chain import dev_account
from shardnet.errors import PeerError
from shardnet.signing import recover_sender
from tests.helpers import http_server


async def test_a_request_is_signed_and_sent_is_set_once_it_is_on_the_wire_not_when_answered():
    account = dev_account(3)
    answer = asyncio.Event()
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append(recover_sender(request.path, body, request.headers["x-shardnet-signature"]) or "")
        await answer.wait()  # the answer comes only when the test says so
        return web.json_response({"ok": True})

    runner, base = await http_server("POST", handler)
    peers = PeerClient(account, timeout_s=5.0, retries=0)
    try:
        sent = asyncio.Event()
        reply = asyncio.ensure_future(peers.post(base, "/v1/jobs/1/receipt", b"{}", sent))
        await asyncio.wait_for(sent.wait(), 2.0)  # written out while the answer is still held back
        assert not reply.done()
        await asyncio.sleep(0.05)
        assert seen == [account.address]  # the server read it and knows who signed it
        answer.set()
        assert (await reply).json() == {"ok": True}
    finally:
        await peers.close()
        await runner.cleanup()


async def test_sent_is_set_when_the_request_fails_so_nobody_waits_on_it():
    async def handler(request: web.Request) -> web.Response:
        return web.Response(status=200)

    peers = PeerClient(dev_account(3), timeout_s=1.0, retries=0)
    runner, base = await http_server("POST", handler)
    await runner.cleanup()  # nobody listens there any more
    sent = asyncio.Event()
    try:
        try:
            await peers.post(base, "/v1/jobs/1/receipt", b"{}", sent)
        except PeerError:
            pass
        assert sent.is_set()
        banned = asyncio.Event()  # the peer is banned now: tried once, and not waited on either
        try:
            await peers.post(base, "/v1/jobs/1/receipt", b"{}", banned)
        except PeerError as exc:
            assert "still fails" in str(exc) and "banned" in str(exc)
        assert banned.is_set()
    finally:
        await peers.close()


async def test_a_banned_peer_that_is_back_is_used_again_at_once():
    """A peer banned for failing (it was restarting, say) answers again: the next request to it
    is sent (one try, no retries) instead of refused for the ban, and the ban is lifted."""

    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    peers = PeerClient(dev_account(3), timeout_s=1.0, retries=2)
    runner, base = await http_server("POST", handler)
    await runner.cleanup()  # down
    try:
        try:
            await peers.post(base, "/v1/jobs/1/receipt", b"{}")
            raise AssertionError("a peer nobody listens for answered")
        except PeerError as exc:
            assert "failed 3 times" in str(exc)
        assert base in peers.banned_until
        runner, _ = await http_server("POST", handler, port=int(base.rsplit(":", 1)[1]))  # back, same address
        try:
            assert (await peers.post(base, "/v1/jobs/1/receipt", b"{}")).json() == {"ok": True}
            assert base not in peers.banned_until
        finally:
            await runner.cleanup()
    finally:
        await peers.close()
