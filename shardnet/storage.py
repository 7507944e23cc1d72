"""IPFS storage over the Kubo RPC API (httpx).

Everything is added with the layout `shardnet.cid.cid_v0` reproduces (CIDv0, 256 KiB
chunks, balanced DAG), and every read is re-hashed locally: bytes that do not hash to the
CID that was asked for are refused, whoever served them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
from tqdm import tqdm

from shardnet.cid import CHUNK_SIZE, cid_v0
from shardnet.errors import ContentMismatch, ContentNotFound, StorageError, StorageUnavailable

ADD_PARAMS = {"cid-version": "0", "chunker": f"size-{CHUNK_SIZE}", "pin": "true", "raw-leaves": "false"}


class IpfsClient:
    def __init__(self, api_url: str = "http://127.0.0.1:5001", timeout: float = 30.0):
        self.api_url = api_url.rstrip("/")
        self.timeout = timeout
        self._http = httpx.Client(base_url=f"{self.api_url}/api/v0", timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> IpfsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.post(path, **kwargs)
        except httpx.ConnectError:
            raise StorageUnavailable(
                f"the IPFS RPC API at {self.api_url} is not reachable; start it with 'shardnet devnet up' "
                "or pass the right --ipfs-api"
            ) from None
        except httpx.TimeoutException:
            raise ContentNotFound(f"IPFS call {path} timed out after {self.timeout} s at {self.api_url}") from None
        except httpx.TransportError as exc:  # the daemon went away mid-request (killed, restarting)
            raise self._dropped(exc) from None
        if response.status_code != 200:
            try:
                message = response.json().get("Message", response.text)
            except ValueError:
                message = response.text
            if any(word in message.lower() for word in ("timeout", "timed out", "not found")):
                raise ContentNotFound(f"IPFS {path}: {message}")
            raise StorageError(f"IPFS {path} failed ({response.status_code}): {message}")
        return response

    def _dropped(self, exc: httpx.TransportError) -> StorageUnavailable:
        return StorageUnavailable(
            f"the IPFS RPC API at {self.api_url} dropped the request ({type(exc).__name__}); is the daemon restarting?"
        )

    # ------------------------------------------------------------------ API
    def peer_id(self) -> str:
        return str(self._post("/id").json()["ID"])

    def swarm_addrs(self) -> list[str]:
        """Where other daemons reach this one: its swarm multiaddrs, each ending in /p2p/<peer id>."""
        return [str(a) for a in self._post("/swarm/addrs/local").json().get("Strings") or []]

    def connect(self, addr: str, timeout: float = 5.0) -> None:
        """Open a swarm connection to the daemon at multiaddr `addr` (bitswap then asks it for
        whatever this daemon is asked for and does not hold)."""
        self._post("/swarm/connect", params={"arg": addr, "timeout": f"{timeout}s"}, timeout=timeout + 5)

    def peers(self) -> list[str]:
        """Peer ids of the daemons this one is connected to."""
        return [str(p["Peer"]) for p in self._post("/swarm/peers").json().get("Peers") or []]

    def pinned(self, cid: str) -> bool:
        """Whether `cid` is pinned here (directly or recursively), so this daemon keeps serving it."""
        try:
            keys = self._post("/pin/ls", params={"arg": cid, "type": "all", "timeout": "5s"}, timeout=10).json()
        except (ContentNotFound, StorageError):
            return False
        return cid in (keys.get("Keys") or {})

    def version(self) -> str:
        return str(self._post("/version").json()["Version"])

    def add(self, data: bytes, name: str = "blob", progress: bool = False, cid: str | None = None) -> str:
        """Add and pin `data`; returns its CIDv0. The daemon's answer must equal the local hash
        (`cid`, where the caller has already computed `cid_v0(data)`)."""
        expected = cid or cid_v0(data)
        params = dict(ADD_PARAMS, progress="true" if progress else "false")
        bar = tqdm(total=len(data), unit="B", unit_scale=True, desc=f"ipfs add {name}", disable=not progress)
        stored = None
        try:
            with self._http.stream("POST", "/add", params=params, files={"file": (name, data)}) as response:
                if response.status_code != 200:
                    response.read()
                    raise StorageError(f"IPFS add failed ({response.status_code}): {response.text}")
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if "Hash" in item:
                        stored = item["Hash"]
                    elif "Bytes" in item:
                        bar.update(int(item["Bytes"]) - bar.n)
        except httpx.ConnectError:
            raise StorageUnavailable(
                f"the IPFS RPC API at {self.api_url} is not reachable; start it with 'shardnet devnet up' "
                "or pass the right --ipfs-api"
            ) from None
        except httpx.TransportError as exc:
            raise self._dropped(exc) from None
        finally:
            bar.update(len(data) - bar.n)
            bar.close()
        if stored != expected:
            raise ContentMismatch(
                f"IPFS add returned {stored} but the bytes hash to {expected}; the daemon "
                "does not use CIDv0 with 256 KiB chunks"
            )
        return str(stored)

    def add_file(self, path: Path, progress: bool = False) -> str:
        return self.add(Path(path).read_bytes(), name=Path(path).name, progress=progress)

    def cat(self, cid: str, timeout: float | None = None) -> bytes:
        """Read `cid` back, refusing bytes that do not hash to it. A missing CID fails after `timeout` s."""
        if not cid.startswith("Qm"):
            raise StorageError(f"'{cid}' is not a CIDv0 (Qm...); shardnet stores and verifies CIDv0 content only")
        timeout = timeout or self.timeout
        response = self._post("/cat", params={"arg": cid, "timeout": f"{timeout}s"}, timeout=timeout + 5)
        data = response.content
        actual = cid_v0(data)
        if actual != cid:
            raise ContentMismatch(f"content served for {cid} hashes to {actual}; refused")
        return data

    def pin(self, cid: str, timeout: float | None = None) -> None:
        timeout = timeout or self.timeout
        self._post("/pin/add", params={"arg": cid, "timeout": f"{timeout}s"}, timeout=timeout + 5)

    def block_stat(self, cid: str, timeout: float | None = None) -> int:
        """Size in bytes of the root block of `cid`."""
        timeout = timeout or self.timeout
        return int(
            self._post("/block/stat", params={"arg": cid, "timeout": f"{timeout}s"}, timeout=timeout + 5).json()["Size"]
        )
