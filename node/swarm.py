"""The node's place in the IPFS swarm: its own daemon (`ipfs_api` in node.toml) connected to the
daemons that hold what it needs, found from the deployment file and the chain.

Peers come from three places: the deployment file's `ipfs_peers` (the daemon models were
published to), the node's own `ipfs_peers` setting, and every other registered node, whose
on-chain endpoint answers `GET /v1/ipfs` with its daemon's swarm addresses. Bitswap then asks the
connected daemons for any block this one lacks, so blocks move peer to peer from whichever daemon
holds them; every read is still re-hashed against its CID (`IpfsClient.cat`). A node pins what it
serves, so it keeps serving it onward after the publisher's daemon is gone.

Nothing here may end the node: a peer that does not answer is logged and tried again next time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx

from shardnet.ledger import Ledger
from shardnet.storage import IpfsClient

log = logging.getLogger("shardnet.node.swarm")

PATH = "/v1/ipfs"  # where a node tells peers how to reach its IPFS daemon
REJOIN_S = 30.0  # how often the node reconnects to peers that dropped or newly registered
# (a node whose advertised daemons are all connected is not asked for its addresses again)


def peer_of(addr: str) -> str | None:
    """The peer id a swarm multiaddr ends in (…/p2p/<id>), or None."""
    _, sep, peer = addr.rpartition("/p2p/")
    return peer if sep and peer and "/" not in peer else None


class Swarm:
    def __init__(self, ipfs: IpfsClient, address: str, ledger: Ledger, static_peers: list[str]):
        self.ipfs = ipfs
        self.address = address
        self.ledger = ledger
        self.static_peers = list(static_peers)
        self._own: dict[str, Any] | None = None
        # per node: the endpoint asked and the peer ids it advertised (asked again only when one
        # of them is not connected, or the endpoint changed)
        self._advertisers: dict[str, tuple[str, set[str]]] = {}

    async def own(self) -> dict[str, Any]:
        """This node's daemon: {"peer_id", "addrs"} (what `GET /v1/ipfs` answers)."""
        if self._own is None or not self._own["addrs"]:
            peer_id, addrs = await asyncio.gather(
                asyncio.to_thread(self.ipfs.peer_id), asyncio.to_thread(self.ipfs.swarm_addrs)
            )
            self._own = {"peer_id": peer_id, "addrs": addrs}
        return self._own

    async def _advertised(self, client: httpx.AsyncClient, node: str, endpoint: str) -> list[str]:
        try:
            answer = (await client.get(endpoint.rstrip("/") + PATH)).json()
            addrs = answer.get("addrs") if isinstance(answer, dict) else None
            return [a for a in addrs or [] if isinstance(a, str) and peer_of(a)]
        except (httpx.HTTPError, ValueError) as exc:
            log.debug("node %s at %s gave no IPFS addresses: %s", node, endpoint, exc)
            return []

    async def join(self) -> int:
        """Connect to every known peer not connected yet; returns how many are connected after."""
        try:
            own = await self.own()
            connected = set(await asyncio.to_thread(self.ipfs.peers))
        except Exception as exc:  # noqa: BLE001 - the daemon may be restarting; next time
            log.warning("the node's IPFS daemon at %s does not answer: %s", self.ipfs.api_url, exc)
            return 0
        others = {n: e for n, e in self.ledger.endpoints.items() if n != self.address and e}
        stale = {n: e for n, e in others.items() if not self._joined(n, e, connected)}
        found: list[list[str]] = []
        if stale:
            async with httpx.AsyncClient(timeout=3) as client:
                found = await asyncio.gather(*(self._advertised(client, n, e) for n, e in stale.items()))
        for (node, endpoint), group in zip(stale.items(), found, strict=True):
            self._advertisers[node] = endpoint, {p for a in group if (p := peer_of(a))}
        addrs = list(dict.fromkeys(self.static_peers + [a for group in found for a in group]))
        wanted = [a for a in addrs if (p := peer_of(a)) is not None and p != own["peer_id"] and p not in connected]
        # all at once: an address that does not answer costs its timeout once, not once per
        # address after it (the node is not ready to serve until it has joined)
        await asyncio.gather(*(self._connect(addr, connected) for addr in wanted))
        return len(connected)

    async def _connect(self, addr: str, connected: set[str]) -> None:
        try:
            await asyncio.to_thread(self.ipfs.connect, addr)
        except Exception as exc:  # noqa: BLE001 - an unreachable peer is tried again later
            log.debug("IPFS: could not connect to %s: %s", addr, exc)
            return
        connected.add(str(peer_of(addr)))
        log.info("IPFS: connected to %s", addr)

    def _joined(self, node: str, endpoint: str, connected: set[str]) -> bool:
        """Whether every daemon `node` advertised at `endpoint` is connected already."""
        known = self._advertisers.get(node)
        return known is not None and known[0] == endpoint and bool(known[1]) and known[1] <= connected

    async def run(self) -> None:
        """Stay joined: reconnect every REJOIN_S (peers restart, new nodes register)."""
        while True:
            await self.join()
            await asyncio.sleep(REJOIN_S)
