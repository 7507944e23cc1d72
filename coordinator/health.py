"""What the coordinator's probes know of each node: whether it answers, its round-trip time and
the compute per block it reports while serving.

A node that misses two probes in a row is down: it is neither planned over nor routed through
until it answers again, and the jobs routed through it are rerouted (coordinator.failover). A
node down for longer than `replan_after_s` is gone: its spans are planned away (a shorter
outage, such as a restart, is covered by rerouting to replicas).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

MISSES_DOWN = 2  # probes missed in a row before a node is taken for down
RTT_WEIGHT = 0.3  # weight of the newest probe in the round-trip time's moving average
DEFAULT_RTT_MS = 50.0  # what the router assumes of a node not probed yet


class Change(Enum):
    """What one probe changed about a node."""

    NONE = "none"
    DOWN = "down"  # it has just missed its MISSES_DOWN-th probe in a row
    UP = "up"  # it answers again after being down


@dataclass
class NodeHealth:
    replan_after_s: float
    rtt_ms: dict[str, float] = field(default_factory=dict)  # probe round trip per node (moving average)
    ms_per_block: dict[str, float] = field(default_factory=dict)  # compute per block, as each node measures it
    misses: dict[str, int] = field(default_factory=dict)  # probes missed in a row
    down_since: dict[str, float] = field(default_factory=dict)  # nodes down -> since when (monotonic s)
    replanned: set[str] = field(default_factory=set)  # gone nodes whose spans were planned away

    def answered(self, node: str, rtt_ms: float, health: Any) -> Change:
        """A probe of `node` came back in `rtt_ms` with its /health document."""
        self.rtt_ms[node] = (1 - RTT_WEIGHT) * self.rtt_ms.get(node, rtt_ms) + RTT_WEIGHT * rtt_ms
        measured = health.get("ms_per_block") if isinstance(health, dict) else None
        if isinstance(measured, int | float) and not isinstance(measured, bool) and measured > 0:
            self.ms_per_block[node] = float(measured)
        self.misses[node] = 0
        if self.down_since.pop(node, None) is None:
            return Change.NONE
        self.replanned.discard(node)
        return Change.UP

    def missed(self, node: str) -> Change:
        """A probe of `node` failed (no answer in time, or not a 200)."""
        self.misses[node] = self.misses.get(node, 0) + 1
        if self.misses[node] >= MISSES_DOWN and node not in self.down_since:
            self.down_since[node] = time.monotonic()
            return Change.DOWN
        return Change.NONE

    def newly_gone(self, node: str) -> bool:
        """Whether `node` is gone and its spans not planned away yet (marked planned away now)."""
        if node in self.replanned or not self.gone(node):
            return False
        self.replanned.add(node)
        return True

    def gone(self, node: str) -> bool:
        """Down for longer than `replan_after_s`."""
        since = self.down_since.get(node)
        return since is not None and time.monotonic() - since > self.replan_after_s

    def up(self, nodes: set[str]) -> set[str]:
        """Those of `nodes` not down."""
        return nodes - self.down_since.keys()

    def rtt(self, node: str) -> float:
        return self.rtt_ms.get(node, DEFAULT_RTT_MS)


async def probe(http: Any, endpoint: str) -> tuple[float, Any] | None:
    """GET `endpoint`/health with `http` (an aiohttp session, whose timeout bounds the wait):
    (round trip in ms, the document) when it answers 200 with JSON, else None."""
    import aiohttp

    started = time.perf_counter()
    try:
        async with http.get(endpoint.rstrip("/") + "/health") as response:
            if response.status != 200:
                return None
            health = await response.json()
    except (TimeoutError, aiohttp.ClientError, KeyError, ValueError):
        return None
    return (time.perf_counter() - started) * 1000, health
