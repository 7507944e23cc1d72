"""Data-plane API (FastAPI): receipts out, the client's token stream and output, metrics,
health; and the link other stages send activations and tokens over (a WebSocket on the same
port, answered below the ASGI app by node.link_socket: `uvicorn_config` wires it in)."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node import outputs, streams, swarm
from node.link import MAX_FRAME_BYTES
from node.link_socket import server_protocol
from shardnet.signing import recover_sender

if TYPE_CHECKING:
    from node.agent import NodeAgent


MAX_BODY_BYTES = 64 << 10  # a receipt or token-stream request (activations go over links)
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

    @app.post("/v1/jobs/{job_id}/output")
    async def output(job_id: int, request: Request) -> Response:
        """The job's output as submitted (its bytes, sealed if the job is private), to the client
        that posted it, while this node still holds it (node/outputs.py)."""
        signed = await _signed(request)
        if isinstance(signed, JSONResponse):
            return signed
        _, sender = signed
        reason = outputs.refusal(agent.ledger, job_id, sender)
        if reason is not None:
            return JSONResponse({"error": reason}, status_code=403)
        output = agent.settlement.outputs.get(job_id)
        if output is None:
            reason = f"this node holds no output of job {job_id}; read it from IPFS by its on-chain CID"
            return JSONResponse({"error": reason}, status_code=404)
        agent.metrics.outputs_handed.inc()
        return Response(output, media_type="application/octet-stream")

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


def uvicorn_config(agent: NodeAgent, host: str, port: int, ws_max_size: int = MAX_FRAME_BYTES) -> uvicorn.Config:
    """The node's HTTP server: the app above, and its WebSocket upgrades answered as links
    (node.link_socket), each message bounded by `ws_max_size` from its declared length."""
    return uvicorn.Config(
        create_app(agent),
        host=host,
        port=port,
        log_level="warning",
        ws=server_protocol(agent.links_in),
        ws_max_size=ws_max_size,
    )


class NodeServer(uvicorn.Server):
    """uvicorn's server less its own signal handling. The node's process turns SIGTERM / SIGINT
    into a cancellation of the agent (shardnet.process.run_until_signal), whose shutdown stops
    this server and then drains (IPFS writes, links, the saved state). uvicorn's handlers would
    take the signal instead and raise it again once the server stopped, cancelling that shutdown
    half-way."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield
