"""Routing: a chain of (node, span) stages covering every block. Pure functions, no I/O."""

from __future__ import annotations

from shardnet.protocol import Stage


def route_any(assignments: dict[str, list], blocks: int, price_per_block: int,
              usable: set[str] | None = None) -> list[Stage] | None:
    """A valid cover from confirmed spans: from block 0, take the confirmed node whose span
    reaches furthest (ties: lowest address), until every block is covered. None if impossible."""
    confirmed = {node: (start, end) for node, (start, end, ok) in assignments.items()
                 if ok and (usable is None or node in usable)}
    stages, position = [], 0
    while position < blocks:
        candidates = [(end, node) for node, (start, end) in confirmed.items() if start <= position < end]
        if not candidates:
            return None
        end = max(e for e, _ in candidates)
        node = min(n for e, n in candidates if e == end)
        stages.append(Stage(node, position, end, price_per_block * (end - position)))
        position = end
    return stages


def route_cost(stages: list[Stage], coordinator_fee_bps: int) -> int:
    fees = sum(s.fee for s in stages)
    return fees + fees * coordinator_fee_bps // 10_000
