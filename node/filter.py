"""Filter: which events concern this node."""

from __future__ import annotations


def my_stage(address: str, route: list[tuple]) -> int | None:
    """This node's stage index on a route of (node, start, end, fee), or None."""
    for index, stage in enumerate(route):
        if stage[0] == address:
            return index
    return None
