"""Routing: the chain of (node, span) stages that covers every block at the lowest cost the
client asked for. Pure functions, no I/O.

The graph's vertices are block positions 0..blocks; a node whose confirmed span is
[start, end) offers an edge from every position p in [start, end) to `end` (it runs blocks
[p, end)). Edges only go forward, so the cheapest route is a dynamic programme over
positions in order: exact, and deterministic (ties go to the lower node index).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from shardnet.jobs import escrow_needed
from shardnet.protocol import Assignment, Stage


@dataclass(frozen=True)
class Candidate:
    address: str
    start: int
    end: int  # confirmed span [start, end)
    price_per_block: int  # wei
    latency_ms: float  # per hop (measured)
    ms_per_block: float  # compute time per block (measured)
    reputation: float  # 0..1


@dataclass(frozen=True)
class RouteWeights:
    """Client-stated cost: weight * (latency ms, fee in gwei, distrust), with hard limits."""

    latency: float = 1.0
    price: float = 0.0
    trust: float = 0.0
    max_fee: int | None = None  # wei, stage fees only
    min_reputation: float = 0.0
    avoid: frozenset[str] = frozenset()


def stage_cost(c: Candidate, p: int, w: RouteWeights) -> float:
    blocks = c.end - p
    return (
        w.latency * (c.latency_ms + c.ms_per_block * blocks)
        + w.price * c.price_per_block * blocks / 1e9
        + w.trust * (1.0 - c.reputation) * blocks
    )


def route(
    candidates: list[Candidate], blocks: int, w: RouteWeights = RouteWeights(), whole_spans: bool = False
) -> list[Stage] | None:
    """The cheapest cover of [0, blocks), or None if the usable spans do not cover the model or
    no cover fits `max_fee` (the cheapest cover in wei is taken when the preferred one does not).
    `whole_spans`: a node runs exactly its span (no entry part-way into it)."""
    usable = [
        c
        for c in candidates
        if c.address not in w.avoid and c.reputation >= w.min_reputation and 0 <= c.start < c.end <= blocks
    ]
    if not usable:
        return None
    arrays = _arrays(usable)
    per_block = (
        w.latency * arrays["ms_per_block"] + w.price * arrays["price"] / 1e9 + w.trust * (1.0 - arrays["reputation"])
    )
    best = _dp(usable, arrays, blocks, w.latency * arrays["latency"], per_block, whole_spans)
    if best is None:
        return None
    if w.max_fee is not None and sum(s.fee for s in best) > w.max_fee:
        cheapest = _dp(usable, arrays, blocks, np.zeros(len(usable)), arrays["price"].astype(float), whole_spans)
        if cheapest is None or sum(s.fee for s in cheapest) > w.max_fee:
            return None
        return cheapest
    return best


def _arrays(usable: list[Candidate]) -> dict[str, np.ndarray]:
    return {
        "start": np.array([c.start for c in usable]),
        "end": np.array([c.end for c in usable]),
        "price": np.array([c.price_per_block for c in usable], dtype=float),
        "latency": np.array([c.latency_ms for c in usable]),
        "ms_per_block": np.array([c.ms_per_block for c in usable]),
        "reputation": np.array([c.reputation for c in usable]),
    }


def _dp(
    usable: list[Candidate],
    arrays: dict[str, np.ndarray],
    blocks: int,
    fixed: np.ndarray,
    per_block: np.ndarray,
    whole_spans: bool = False,
) -> list[Stage] | None:
    """Stage cost = fixed[i] + per_block[i] * (end_i - p). Vectorised over candidates per position."""
    starts, ends = arrays["start"], arrays["end"]
    dist = np.full(blocks + 1, np.inf)
    dist[0] = 0.0
    via_node = np.full(blocks + 1, -1)
    via_from = np.full(blocks + 1, -1)
    for p in range(blocks):
        if not np.isfinite(dist[p]):
            continue
        idx = np.nonzero((starts == p) if whole_spans else (starts <= p) & (p < ends))[0]
        if idx.size == 0:
            continue
        total = dist[p] + fixed[idx] + per_block[idx] * (ends[idx] - p)
        order = np.lexsort((idx, total))  # cheapest first, then the lower index
        targets = ends[idx[order]]
        q, first = np.unique(targets, return_index=True)
        cand_total, cand_node = total[order][first], idx[order][first]
        better = (cand_total < dist[q] - 1e-12) | ((np.abs(cand_total - dist[q]) <= 1e-12) & (via_node[q] > cand_node))
        dist[q[better]] = cand_total[better]
        via_node[q[better]] = cand_node[better]
        via_from[q[better]] = p
    if not np.isfinite(dist[blocks]):
        return None
    stages: list[Stage] = []
    end = blocks
    while end > 0:
        c, start = usable[via_node[end]], int(via_from[end])
        stages.append(Stage(c.address, start, end, c.price_per_block * (end - start)))
        end = start
    return stages[::-1]


def route_any(
    assignments: dict[str, Assignment], blocks: int, price_per_block: int, usable: set[str] | None = None
) -> list[Stage] | None:
    """A cover from confirmed spans with no measurements yet: fewest hops, then lowest address;
    each node runs its whole span (what the node agent loads)."""
    candidates = [
        Candidate(node, a.start, a.end, price_per_block, 1.0, 0.0, 1.0)
        for node, a in sorted(assignments.items())
        if a.confirmed and (usable is None or node in usable)
    ]
    return route(candidates, blocks, RouteWeights(latency=1.0), whole_spans=True)


def route_cost(stages: list[Stage], coordinator_fee_bps: int, reserve_bps: int = 0) -> int:
    """What the market needs in escrow to route `stages` (`shardnet.jobs.escrow_needed`)."""
    return escrow_needed(sum(s.fee for s in stages), coordinator_fee_bps, reserve_bps)
