"""Data-plane API (FastAPI): the link other stages send activations and tokens over
(a WebSocket, node.link), receipts out, the client's token stream, metrics, health."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node import link, streams, swarm
from shardnet.signing import recover_sender

if TYPE_CHECKING:
    from node.agent import NodeAgent


MAX_BODY_BYTES = 64 << 10  # a receipt or token-stream request (activations go over links)
HANDSHAKE_TIMEOUT_S = 10.0
log = logging.getLogger("shardnet.node.server")


def create_app(agent: NodeAgent) -> FastAPI:
    app = FastAPI(title="shardnet node", docs_url=None, redoc_url=None)

    async def _bounded_body(request: Request) -> bytes | None:
        """The request body, or None when it is over MAX_BODY_BYTES: refused from its declared
        length before anything is read, or as soon as a chunked body passes the limit."""
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return None
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                return None
            chunks.append(chunk)
        return b"".join(chunks)

    async def _signed(request: Request) -> tuple[bytes, str] | JSONResponse:
        """The body of a signed request and who signed it, or the refusal to send back: 413 over
        MAX_BODY_BYTES, 401 without a valid signature by the `x-shardnet-from` address."""
        body = await _bounded_body(request)
        if body is None:
            agent.metrics.refused.labels("too-large").inc()
            return JSONResponse({"error": f"request body over {MAX_BODY_BYTES} bytes"}, status_code=413)
        signature = request.headers.get("x-shardnet-signature", "")
        claimed = request.headers.get("x-shardnet-from", "")
        sender = recover_sender(request.url.path, body, signature)
        if not sender or sender.lower() != claimed.lower():
            agent.metrics.refused.labels("bad-signature").inc()
            return JSONResponse({"error": "missing or invalid x-shardnet-signature"}, status_code=401)
        return body, sender

    @app.websocket(link.PATH)
    async def link_in(ws: WebSocket) -> None:
        """A link from another node (node.link): the Noise handshake, then frames, each acked."""
        await ws.accept()
        try:
            first = await asyncio.wait_for(ws.receive(), HANDSHAKE_TIMEOUT_S)
        except (TimeoutError, WebSocketDisconnect):
            return
        try:
            opened = agent.links_in.handshake(first.get("bytes") or b"")
        except Exception as exc:  # whatever a peer sends, the node keeps serving
            log.exception("link handshake failed")
            opened = f"handshake failed: {type(exc).__name__}"
        if isinstance(opened, str):
            agent.metrics.refused.labels("bad-handshake").inc()
            log.warning("link refused: %s", opened)
            with contextlib.suppress(WebSocketDisconnect):
                await ws.close(code=1008, reason=opened[:120])
            return
        noise, sender, reply = opened
        try:
            await ws.send_bytes(reply)
        except WebSocketDisconnect:
            return
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                ack = await agent.links_in.frame(noise, sender, message.get("bytes") or b"")
            except Exception:  # whatever a peer sends, the node keeps serving
                log.exception("link from %s: frame failed", sender)
                ack = None
            if ack is None:
                with contextlib.suppress(WebSocketDisconnect):
                    await ws.close(code=1008, reason="malformed frame")
                return
            # the stage the frame woke starts first: the ack (its sealing too) is off the job's
            # critical path
            await asyncio.sleep(0)
            try:
                await ws.send_bytes(link.seal(noise, ack))
            except WebSocketDisconnect:
                return

    @app.post("/v1/jobs/{job_id}/receipt")
    async def receipt(job_id: int, request: Request) -> JSONResponse:
        signed = await _signed(request)
        if isinstance(signed, JSONResponse):
            return signed
        body, sender = signed
        result, reason = await agent.settlement.receipt_for(job_id, sender)
        if result is None:
            return JSONResponse({"error": reason}, status_code=403)
        return JSONResponse(result)

    @app.post("/v1/jobs/{job_id}/key")
    async def job_key(job_id: int, request: Request) -> JSONResponse:
        """A private job's client hands over the job key, sealed to this node (node/privacy.py)."""
        signed = await _signed(request)
        if isinstance(signed, JSONResponse):
            return signed
        body, sender = signed
        await agent.pipeline.wait_for_route(job_id)
        reason = agent.job_keys.accept(job_id, sender, body)
        if reason is not None:
            return JSONResponse({"error": reason}, status_code=403)
        return JSONResponse({"kept": True})

    @app.post("/v1/jobs/{job_id}/key-for-audit")
    async def job_key_for_audit(job_id: int, request: Request) -> JSONResponse:
        """A private job's key, sealed to a committee member checking one of its stages."""
        signed = await _signed(request)
        if isinstance(signed, JSONResponse):
            return signed
        body, sender = signed
        sealed, reason = agent.job_keys.for_member(job_id, sender, body)
        if sealed is None:
            return JSONResponse({"error": reason}, status_code=403)
        return JSONResponse(sealed)

    @app.post("/v1/jobs/{job_id}/tokens")
    async def tokens(job_id: int, request: Request) -> Response:
        """The job's tokens as they are generated, to the client that posted it (node/streams.py).
        Body: `{"from": n}` to start at the n-th token (after a reconnect)."""
        signed = await _signed(request)
        if isinstance(signed, JSONResponse):
            return signed
        body, sender = signed
        try:
            start = int(json.loads(body or b"{}").get("from", 0))
        except (ValueError, TypeError, AttributeError):
            return JSONResponse({"error": 'body must be JSON {"from": <token index>}'}, status_code=400)
        await agent.pipeline.wait_for_route(job_id)
        reason = streams.refusal(agent.ledger, agent.address, job_id, sender)
        if reason is not None:
            return JSONResponse({"error": reason}, status_code=403)
        lines = streams.token_lines(agent.ledger, agent.executor, job_id, max(0, start))
        return StreamingResponse(lines, media_type="application/x-ndjson")

    @app.get(swarm.PATH)
    async def ipfs_addresses() -> dict[str, Any]:
        """Where peers reach this node's IPFS daemon (bitswap): its peer id and swarm multiaddrs
        (none, with the reason, while the daemon does not answer)."""
        try:
            return await agent.swarm.own()
        except Exception as exc:  # noqa: BLE001 - the daemon is down or restarting
            return {"peer_id": None, "addrs": [], "error": f"this node's IPFS daemon does not answer: {exc}"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return agent.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(agent.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
