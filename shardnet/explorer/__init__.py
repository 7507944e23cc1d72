"""A read-only web explorer over the event index: the network (nodes, models, block coverage,
jobs and fees over time), a job, a node, a model. Served by FastAPI; HTML rendered on the
server with Jinja2 (no script or stylesheet from outside, so it works on a closed network);
pages refresh themselves when a new block is indexed (server-sent events).

One thread keeps the index in sync with the chain; requests read through their own SQLite
connection (WAL: readers see whole committed block ranges, never half of one)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from web3 import Web3

from shardnet.chain import Chain
from shardnet.errors import ShardnetError
from shardnet.explorer.live import Prober, summarise
from shardnet.indexer import Index
from shardnet.storage import IpfsClient

TEMPLATES = Jinja2Templates(directory=Path(__file__).parent / "templates")
MAX_ID = 1 << 63  # ids at or above this cannot be in the index (SQLite integers are 64-bit)
STATUSES = ("posted", "routed", "completed", "expired", "cancelled", "aborted", "aborting")


def amount_text(wei: int) -> str:
    """An amount for people: ETH from a thousandth of one, gwei from a millionth of one, else wei."""
    if abs(wei) >= 10**15:
        return f"{wei / 10**18:.6g} ETH"
    if abs(wei) >= 10**6:
        return f"{wei / 10**9:.6g} gwei"
    return f"{wei} wei"


def _amount(wei: int) -> Markup:
    """The amount for people, with the exact wei on hover."""
    return Markup('<span class="amount" title="{} wei">{}</span>').format(wei, amount_text(wei))


def _short(address: str | None) -> str:
    return f"{address[:8]}…{address[-4:]}" if address else "—"


TEMPLATES.env.filters["short"] = _short
TEMPLATES.env.filters["amount"] = _amount
TEMPLATES.env.filters["amount_text"] = amount_text
TEMPLATES.env.filters["clock"] = lambda t: time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t))


class Syncer:
    """Keeps the index at the chain head; remembers the last error for the page footer."""

    def __init__(self, path: Path, chain: Chain, interval_s: float):
        self.index = Index(path, chain)
        self.interval_s = interval_s
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="indexer", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.index.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.index.sync()
                self.error = None
            except ShardnetError as exc:  # the RPC went away: keep serving what is indexed, retry
                self.error = str(exc)
            self._stop.wait(self.interval_s)


def activity_svg(buckets: list[dict[str, Any]], width: int = 720, height: int = 160) -> dict[str, Any]:
    """Bars (jobs per bucket) and a line (fees paid per bucket), scaled into one SVG box."""
    if not buckets:
        return {"bars": [], "line": "", "width": width, "height": height, "max_jobs": 0, "max_fees": 0}
    n, pad = len(buckets), 20
    step = (width - 2 * pad) / n
    max_jobs = max(b["jobs"] for b in buckets) or 1
    max_fees = max(b["fees"] for b in buckets) or 1
    bars, points = [], []
    for i, b in enumerate(buckets):
        h = (height - 2 * pad) * b["jobs"] / max_jobs
        bars.append({"x": pad + i * step + 1, "y": height - pad - h, "w": max(step - 2, 1), "h": h, **b})
        points.append(f"{pad + (i + 0.5) * step:.1f},{height - pad - (height - 2 * pad) * b['fees'] / max_fees:.1f}")
    return {
        "bars": bars,
        "line": " ".join(points),
        "width": width,
        "height": height,
        "max_jobs": max_jobs,
        "max_fees": max_fees,
    }


def create_app(
    chain: Chain, db_path: Path, interval_s: float = 1.0, ipfs: IpfsClient | None = None, probe_interval_s: float = 5.0
) -> FastAPI:
    """The explorer over the index at `db_path` (kept at the chain head), reading job inputs and
    outputs from `ipfs` and probing every node's agent each `probe_interval_s` (0: never)."""
    syncer = Syncer(db_path, chain, interval_s)
    reader = Index(db_path, chain)
    probe_reader = Index(db_path, chain)  # the prober's own connection, used from its thread only
    prober = Prober(lambda: {n["node"]: n["endpoint"] for n in probe_reader.nodes()}, probe_interval_s)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        syncer.start()
        if probe_interval_s:
            prober.start()
        yield
        if probe_interval_s:
            prober.stop()
        syncer.stop()
        reader.close()
        probe_reader.close()

    def live_nodes() -> list[dict[str, Any]]:
        return [{**n, **prober.liveness(n["node"])} for n in reader.nodes()]

    app = FastAPI(title="shardnet explorer", lifespan=lifespan)

    def page(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context |= {"head": reader.next_block - 1, "sync_error": syncer.error, "chain_id": chain.chain_id}
        return TEMPLATES.TemplateResponse(request, template, context, status_code=status_code)

    def not_found(request: Request, message: str, status_code: int = 404) -> HTMLResponse:
        return page(request, "error.html", status_code=status_code, message=message)

    def address_or_none(value: str) -> str | None:
        return Web3.to_checksum_address(value) if Web3.is_address(value) else None

    @app.get("/", response_class=HTMLResponse)
    async def network(request: Request) -> HTMLResponse:
        return page(
            request,
            "network.html",
            summary=reader.summary(),
            nodes=live_nodes(),
            models=reader.models(),
            jobs=reader.jobs(limit=15, newest_first=True),
            chart=activity_svg(reader.activity()),
        )

    @app.get("/jobs", response_class=HTMLResponse)
    async def jobs(
        request: Request,
        status: str | None = None,
        model: int | None = None,
        client: str | None = None,
        node: str | None = None,
    ) -> HTMLResponse:
        if model is not None and not 0 <= model < MAX_ID:
            return not_found(request, f"model {model} does not exist on this deployment", 404)
        if status and status not in STATUSES:
            return not_found(request, f"unknown status {status!r}; use one of {', '.join(STATUSES)}", 400)
        for name, value in (("client", client), ("node", node)):
            if value and not address_or_none(value):
                return not_found(request, f"{name} {value!r} is not an address: use 0x followed by 40 hex digits", 400)
        rows = reader.jobs(model, client, node, status, newest_first=True)
        return page(request, "jobs.html", jobs=rows, status=status, statuses=STATUSES)

    @app.get("/jobs/{job_id}", response_class=HTMLResponse)
    async def job(request: Request, job_id: str) -> HTMLResponse:
        if not job_id.isdigit():
            return not_found(request, f"job id {job_id!r} is not a number", 400)
        if int(job_id) >= MAX_ID:
            return not_found(request, f"job {job_id} does not exist: {reader.job_count()} jobs are indexed")
        record = reader.job(int(job_id))
        if record is None:
            return not_found(request, f"job {job_id} does not exist (yet): {reader.job_count()} jobs are indexed")
        content = await asyncio.to_thread(
            lambda: {"input": summarise(ipfs, record["input_cid"]), "output": summarise(ipfs, record["output_cid"])}
        )
        return page(request, "job.html", job=record, audits=reader.audits(int(job_id)), content=content)

    @app.get("/nodes/{address}", response_class=HTMLResponse)
    async def node(request: Request, address: str) -> HTMLResponse:
        checksummed = address_or_none(address)
        if checksummed is None:
            return not_found(request, f"{address!r} is not an address: use 0x followed by 40 hex digits", 400)
        record = reader.node(checksummed)
        if record is None:
            return not_found(request, f"{checksummed} never registered as a node on this deployment")
        return page(request, "node.html", node=record, live=prober.liveness(checksummed))

    @app.get("/models/{model_id}", response_class=HTMLResponse)
    async def model(request: Request, model_id: str) -> HTMLResponse:
        record = reader.model(int(model_id)) if model_id.isdigit() and int(model_id) < MAX_ID else None
        if record is None:
            return not_found(request, f"model {model_id} does not exist on this deployment")
        return page(request, "model.html", model=record)

    # ------------------------------------------------------------------ JSON, for scripts and live updates
    @app.get("/api/summary")
    async def api_summary() -> dict[str, Any]:
        return {**reader.summary(), "sync_error": syncer.error}

    @app.get("/api/jobs/{job_id}")
    async def api_job(job_id: int) -> JSONResponse:
        record = reader.job(job_id) if 0 <= job_id < MAX_ID else None
        if record is None:
            raise HTTPException(404, f"job {job_id} does not exist (yet)")
        return JSONResponse(record)

    @app.get("/api/stream")
    async def stream(request: Request) -> StreamingResponse:
        """Server-sent events: one `{"block": n}` message whenever new blocks are indexed."""

        async def events() -> AsyncIterator[str]:
            last = None
            while not await request.is_disconnected():
                head = reader.next_block - 1
                if head != last:
                    last = head
                    yield f"data: {json.dumps({'block': head})}\n\n"
                await asyncio.sleep(0.5)

        return StreamingResponse(events(), media_type="text/event-stream")

    return app
