"""What the explorer reads beyond chain events: whether each node's agent answers (probed in the
background, so a stopped node no longer looks like a live one), and a job's input and output
read from IPFS and summarised for people (text, tokens, embeddings)."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import httpx

from shardnet.errors import ShardnetError
from shardnet.sealing import is_sealed
from shardnet.storage import IpfsClient

PROBE_TIMEOUT_S = 1.0
MAX_CONTENT_BYTES = 1 << 20  # inputs and outputs larger than this are not shown
CONTENT_TIMEOUT_S = 3.0


class Prober:
    """Probes each registered node's `/health` every `interval_s`; remembers when each last answered."""

    def __init__(self, endpoints: Any, interval_s: float = 5.0):
        self.endpoints = endpoints  # () -> {address: endpoint}
        self.interval_s = interval_s
        self.last_seen: dict[str, float] = {}
        self.probed_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prober", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as http:
            while not self._stop.is_set():
                for address, endpoint in self.endpoints().items():
                    try:
                        if endpoint and http.get(endpoint.rstrip("/") + "/health").status_code == 200:
                            self.last_seen[address] = time.time()
                    except (httpx.HTTPError, ValueError):
                        pass
                self.probed_at = time.time()
                self._stop.wait(self.interval_s)

    def liveness(self, address: str) -> dict[str, Any]:
        """`alive` (answered at the last probe round) and `last_seen` (unix time or None)."""
        seen = self.last_seen.get(address)
        alive = seen is not None and seen >= self.probed_at - self.interval_s - 2 * PROBE_TIMEOUT_S
        return {"alive": alive if self.probed_at else None, "last_seen": seen}


def summarise(ipfs: IpfsClient | None, cid: str | None) -> dict[str, Any] | None:
    """A job input or output from IPFS, summarised: text, sentence pairs, tokens, embeddings
    (count, dimension, first values), images (count, bytes), labels or a tensor's shape;
    `error` says why it could not be read."""
    if not cid:
        return None
    if ipfs is None:
        return {"error": "no IPFS API configured for the explorer"}
    try:
        raw = ipfs.cat(cid, timeout=CONTENT_TIMEOUT_S)
    except ShardnetError as exc:
        return {"error": f"not readable from IPFS: {exc}"}
    if len(raw) > MAX_CONTENT_BYTES:
        return {"error": f"{len(raw)} bytes: too large to show here"}
    if is_sealed(raw):
        return {"error": f"a private job's: {len(raw)} bytes, encrypted; only its client and route read it"}
    try:
        data = json.loads(raw)
    except ValueError:
        return {"error": f"{len(raw)} bytes that are not JSON"}
    if not isinstance(data, dict):
        return {"error": "not a JSON object"}
    out: dict[str, Any] = {}
    for key in ("prompt", "text"):
        if isinstance(data.get(key), str):
            out["text"] = data[key]
    if isinstance(data.get("texts"), list):
        out["texts"] = [t for t in data["texts"] if isinstance(t, str)]
    if isinstance(data.get("pairs"), list):  # sentence pairs for an encoder
        out["pairs"] = [p for p in data["pairs"] if isinstance(p, list) and len(p) == 2]
    if isinstance(data.get("images"), list):  # classify input: base64 image files (not shown)
        out["images"] = {"count": len(data["images"]), "bytes": sum(len(i) * 3 // 4 for i in data["images"])}
    if isinstance(data.get("labels"), list):  # classify output
        out["labels"] = data["labels"]
    for key in ("input_ids", "tokens"):
        if isinstance(data.get(key), list):
            out["tokens"] = data[key]
    if isinstance(data.get("embeddings"), list) and data["embeddings"]:
        vectors = data["embeddings"]
        out["embeddings"] = {"count": len(vectors), "dimension": len(vectors[0]), "first": vectors[0][:4]}
    if isinstance(data.get("shape"), list):
        out["shape"] = data["shape"]
    return out or {"error": "no text, tokens or embeddings in it"}
