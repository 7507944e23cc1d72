"""Shard planning: which node serves which consecutive blocks. Pure functions, no I/O."""

from __future__ import annotations

from shardnet.protocol import Span


def plan_even(nodes: list[str], blocks: int) -> dict[str, Span]:
    """Consecutive spans of near-equal length, one per node (at most one node per block)."""
    nodes = sorted(nodes)[:blocks]
    if not nodes:
        return {}
    return {node: Span(blocks * i // len(nodes), blocks * (i + 1) // len(nodes)) for i, node in enumerate(nodes)}
