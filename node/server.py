"""Data-plane API (FastAPI): activations in, receipts out, metrics, health."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node import streams
from shardnet.signing import recover_sender

if TYPE_CHECKING:
    from node.agent import NodeAgent


MAX_BODY_BYTES = 64 << 20  # one activation message: 2048 positions x 8192 hidden in fp32


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

    async def _sender(request: Request, body: bytes) -> str | None:
        signature = request.headers.get("x-shardnet-signature", "")
        claimed = request.headers.get("x-shardnet-from", "")
        sender = recover_sender(request.url.path, body, signature)
        return sender if sender and sender.lower() == claimed.lower() else None

    @app.post("/v1/jobs/{job_id}/stages/{stage}")
    async def activations(job_id: int, stage: int, request: Request) -> JSONResponse:
        body = await _bounded_body(request)
        if body is None:
            agent.metrics.refused.labels("too-large").inc()
            return JSONResponse({"error": f"message over {MAX_BODY_BYTES} bytes"}, status_code=413)
        sender = await _sender(request, body)
        if sender is None:
            agent.metrics.refused.labels("bad-signature").inc()
            return JSONResponse({"error": "missing or invalid x-shardnet-signature"}, status_code=401)
        ok, reason = await agent.pipeline.accept(job_id, stage, sender, body)
        if not ok:
            agent.metrics.refused.labels("not-on-route").inc()
            return JSONResponse({"error": reason}, status_code=403)
        return JSONResponse({"accepted": True}, status_code=202)

    @app.post("/v1/jobs/{job_id}/receipt")
    async def receipt(job_id: int, request: Request) -> JSONResponse:
        body = await _bounded_body(request) or b""
        sender = await _sender(request, body)
        if sender is None:
            return JSONResponse({"error": "missing or invalid x-shardnet-signature"}, status_code=401)
        result, reason = await agent.settlement.receipt_for(job_id, sender)
        if result is None:
            return JSONResponse({"error": reason}, status_code=403)
        return JSONResponse(result)

    @app.post("/v1/jobs/{job_id}/tokens")
    async def tokens(job_id: int, request: Request) -> Response:
        """The job's tokens as they are generated, to the client that posted it (node/streams.py).
        Body: `{"from": n}` to start at the n-th token (after a reconnect)."""
        body = await _bounded_body(request) or b""
        sender = await _sender(request, body)
        if sender is None:
            return JSONResponse({"error": "missing or invalid x-shardnet-signature"}, status_code=401)
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

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return agent.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(agent.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
