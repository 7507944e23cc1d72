"""Shard planning: which node serves which consecutive blocks. Pure functions, no I/O.

Throughput model: node i runs `throughput_i` block-forwards per second (measured, not just
declared); serving a span costs it the sum of the span's per-block compute costs, so it passes
`throughput_i / cost(span_i)` tokens per second through every block of its span. A block's
throughput is the sum over the nodes covering it; the plan's bottleneck is the lowest block
throughput, and a plan is feasible when every block has at least `replicas` nodes and every
span fits its node's memory. The planner maximises the bottleneck: each node takes the
longest span its memory allows (the total throughput a node adds is the same whatever its
length, so longer spans spread it more evenly and add coverage), placed where the coverage
deficit and then the throughput are lowest; a few passes of local moves then lift the
bottleneck further.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from shardnet.protocol import Span


@dataclass(frozen=True)
class NodeSpec:
    address: str
    memory_mb: float  # memory for blocks
    throughput: float  # block-forwards per second (measured)
    latency_ms: float = 10.0
    reputation: float = 1.0  # 0..1


@dataclass(frozen=True)
class ModelSpec:
    block_mb: tuple[float, ...]  # memory per block
    block_cost: tuple[float, ...]  # relative compute per block

    @property
    def blocks(self) -> int:
        return len(self.block_mb)

    @classmethod
    def uniform(cls, blocks: int, block_mb: float = 100.0) -> ModelSpec:
        return cls((block_mb,) * blocks, (1.0,) * blocks)


@dataclass(frozen=True)
class Plan:
    spans: dict[str, Span]
    bottleneck: float  # tokens/s through the slowest block; 0 if some block lacks replicas
    min_replicas: int
    slowest: float = 0.0  # tokens/s through the slowest block, replicas or not (0: a block is uncovered)


def block_throughput(
    spans: dict[str, Span], nodes: dict[str, NodeSpec], model: ModelSpec
) -> tuple[np.ndarray, np.ndarray]:
    """(tokens/s per block, replicas per block) of an assignment."""
    cost = np.asarray(model.block_cost)
    thr = np.zeros(model.blocks)
    cov = np.zeros(model.blocks, dtype=int)
    for address, span in spans.items():
        thr[span.start : span.end] += nodes[address].throughput / cost[span.start : span.end].sum()
        cov[span.start : span.end] += 1
    return thr, cov


def evaluate(spans: dict[str, Span], nodes: dict[str, NodeSpec], model: ModelSpec, replicas: int) -> Plan:
    thr, cov = block_throughput(spans, nodes, model)
    bottleneck = float(thr.min()) if cov.min() >= replicas else 0.0
    return Plan(dict(spans), bottleneck, int(cov.min()), float(thr.min()))


def _longest_windows(memory_mb: float, block_mb: np.ndarray) -> np.ndarray:
    """For every start, the end of the longest window that fits in memory (end == start: none)."""
    prefix = np.concatenate([[0.0], np.cumsum(block_mb)])
    return np.searchsorted(prefix, prefix[:-1] + memory_mb + 1e-9, side="right") - 1


def _window_scores(
    thr: np.ndarray,
    cov: np.ndarray,
    node_thr: float,
    cost_prefix: np.ndarray,
    max_end: np.ndarray,
    replicas: int,
    longest_only: bool = False,
    ends_ok: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every window [s, e) a node could take (e <= max_end[s]): coverage gained (blocks lifted
    toward `replicas`), the bottleneck after adding the node there, and the mean throughput the
    window had. Arrays indexed [s, e]; invalid windows are -inf."""
    blocks = len(thr)
    shape = (blocks, blocks + 1)
    gain = np.full(shape, -np.inf)
    after = np.full(shape, -np.inf)
    mean = np.full(shape, np.inf)
    # lifting a block from 0 to 1 replica outweighs every lift from 1 to 2, and so on
    deficit = np.where(cov < replicas, float(blocks + 1) ** (replicas - 1 - np.minimum(cov, replicas - 1)), 0.0)
    d_prefix = np.concatenate([[0.0], np.cumsum(deficit)])
    t_prefix = np.concatenate([[0.0], np.cumsum(thr)])
    # outside minima: min over [0, s) and [e, blocks)
    pre_min = np.concatenate([[np.inf], np.minimum.accumulate(thr)])
    suf_min = np.concatenate([np.minimum.accumulate(thr[::-1])[::-1], [np.inf]])
    starts = np.arange(blocks)
    if longest_only:  # one window per start: the longest that fits (large swarms)
        e = max_end
        ok = e > starts
        s = starts[ok]
        e = e[ok]
        inside = np.array([thr[a:b].min() for a, b in zip(s, e, strict=True)]) if len(s) else np.array([])
        added = node_thr / (cost_prefix[e] - cost_prefix[s])
        gain[s, e] = d_prefix[e] - d_prefix[s]
        after[s, e] = np.minimum(np.minimum(pre_min[s], suf_min[e]), inside + added)
        mean[s, e] = (t_prefix[e] - t_prefix[s]) / (e - s)
        return gain, after, mean
    inside = np.full(blocks, np.inf)
    for length in range(1, blocks + 1):
        s = starts[: blocks - length + 1]
        e = s + length
        inside = np.minimum(inside[: len(s)], thr[e - 1])
        ok = e <= max_end[s]
        if not ok.any():
            break
        if ends_ok is not None:
            ok &= ends_ok[e]
        added = node_thr / (cost_prefix[e] - cost_prefix[s])
        value = np.minimum(np.minimum(pre_min[s], suf_min[e]), inside + added)
        gain[s[ok], e[ok]] = (d_prefix[e] - d_prefix[s])[ok]
        after[s[ok], e[ok]] = value[ok]
        mean[s[ok], e[ok]] = ((t_prefix[e] - t_prefix[s]) / length)[ok]
    return gain, after, mean


def plan(
    nodes: list[NodeSpec],
    model: ModelSpec,
    replicas: int = 2,
    passes: int | None = None,
    starts: int | None = None,
    max_span: int | None = None,
    boundaries: tuple[int, ...] | None = None,
) -> Plan:
    """Best of a few greedy constructions (different node orders, seeded so the result is
    deterministic), each improved by local moves: single-node moves, then (medium swarms) a
    leximin polish over every window, then (small swarms) moves of two or three nodes at once. Large
    swarms get one construction and one pass (their many nodes leave little to gain and the
    time budget is a second)."""
    import random

    size = len(nodes) * model.blocks
    large = size > 20_000
    passes = passes if passes is not None else (1 if large else 3)
    starts = starts if starts is not None else (1 if large else 12 if size <= SMALL else 4)
    orders = [
        sorted(nodes, key=lambda n: (-n.throughput, n.address)),
        sorted(nodes, key=lambda n: (n.throughput, n.address)),
        sorted(nodes, key=lambda n: (-n.memory_mb, n.address)),
    ]
    rng = random.Random(len(nodes) * 1_000_003 + model.blocks)
    while len(orders) < starts:
        shuffled = sorted(nodes, key=lambda n: n.address)
        rng.shuffle(shuffled)
        orders.append(shuffled)
    plans = [
        _plan_once(order, model, replicas, passes, longest_only=large, max_span=max_span, boundaries=boundaries)
        for order in orders[: max(1, starts)]
    ]
    return max(plans, key=lambda p: (p.min_replicas >= replicas, p.bottleneck, p.min_replicas))


def _plan_once(
    nodes: list[NodeSpec],
    model: ModelSpec,
    replicas: int,
    passes: int,
    longest_only: bool = False,
    max_span: int | None = None,
    boundaries: tuple[int, ...] | None = None,
) -> Plan:
    by_address = {n.address: n for n in nodes}
    block_mb = np.asarray(model.block_mb, dtype=float)
    cost_prefix = np.concatenate([[0.0], np.cumsum(np.asarray(model.block_cost, dtype=float))])
    blocks = model.blocks
    max_end = {n.address: _longest_windows(n.memory_mb, block_mb) for n in nodes}
    if max_span:  # an operator's cap on span length (e.g. to keep a pipeline of >= k stages)
        max_end = {a: np.minimum(e, np.arange(blocks) + max_span) for a, e in max_end.items()}
    ends_ok = None
    if boundaries is not None:  # spans start and end on these blocks only (routes then chain whole spans)
        ends_ok = np.zeros(blocks + 1, dtype=bool)
        ends_ok[list(boundaries)] = True
        cuts = np.array(sorted(boundaries))
        for a, e in max_end.items():
            snapped = cuts[np.searchsorted(cuts, e, side="right") - 1]  # the last boundary <= e
            max_end[a] = np.where(ends_ok[:-1], np.maximum(snapped, np.arange(blocks)), np.arange(blocks))
    thr = np.zeros(blocks)
    cov = np.zeros(blocks, dtype=int)
    spans: dict[str, Span] = {}

    def add(address: str, span: Span, sign: int) -> None:
        thr[span.start : span.end] += (
            sign * by_address[address].throughput / (cost_prefix[span.end] - cost_prefix[span.start])
        )
        cov[span.start : span.end] += sign

    def best_window(node: NodeSpec) -> Span | None:
        gain, after, mean = _window_scores(
            thr, cov, node.throughput, cost_prefix, max_end[node.address], replicas, longest_only, ends_ok
        )
        if not np.isfinite(gain).any():
            return None
        # coverage first; then the bottleneck after the move; then the least served window
        top = gain.max()
        candidates = np.where(gain == top, after, -np.inf)
        best_after = candidates.max()
        candidates = np.where((gain == top) & (after >= best_after - 1e-12), -mean, -np.inf)
        s, e = np.unravel_index(int(np.argmax(candidates)), candidates.shape)
        return Span(int(s), int(e))

    for node in nodes:
        span = best_window(node)
        if span is not None:
            spans[node.address] = span
            add(node.address, span, +1)

    for _ in range(passes):  # local moves: take each node out and put it back where it helps most
        moved = False
        for address in sorted(spans, key=lambda a: (by_address[a].throughput, a)):
            old = spans[address]
            add(address, old, -1)
            new = best_window(by_address[address])
            assert new is not None  # the node's old window is always a candidate
            spans[address] = new
            add(address, new, +1)
            moved |= new != old
        if not moved:
            break
    if not longest_only and len(nodes) * blocks <= POLISH_LIMIT:
        _polish(spans, by_address, thr, cov, cost_prefix, max_end, replicas, passes=2 * passes + 2, ends_ok=ends_ok)
    return evaluate(spans, by_address, model, replicas)


SMALL = 200  # nodes x blocks up to which more constructions are tried (each costs milliseconds)
POLISH_LIMIT = 4_000


def coverage_score(cov: np.ndarray, replicas: int) -> np.ndarray:
    """Coverage as one number per row, ordered leximin: more blocks with >= 1 replica first,
    then more with >= 2, ... up to `replicas` (a block at 0 costs more than any number at 1)."""
    blocks = cov.shape[-1]
    weights = np.concatenate([[0], np.cumsum([(blocks + 1) ** (replicas - 1 - k) for k in range(replicas)])])
    score: np.ndarray = weights[np.minimum(cov, replicas)].sum(axis=-1)
    return score


def _polish(
    spans: dict[str, Span],
    nodes: dict[str, NodeSpec],
    thr: np.ndarray,
    cov: np.ndarray,
    cost_prefix: np.ndarray,
    max_end: dict[str, np.ndarray],
    replicas: int,
    passes: int,
    ends_ok: np.ndarray | None = None,
) -> None:
    """Leximin local search: move one node at a time to the window that maximises (coverage,
    then the block throughputs sorted ascending, compared lexicographically). Beyond the
    bottleneck itself, this lifts the second-lowest block and so on, which lets later moves lift
    the bottleneck where a plain max-min search sees only ties. Updates spans/thr/cov in place."""
    blocks = len(thr)
    windows = {}
    for address in spans:
        ends = max_end[address]
        windows[address] = np.array(
            [(s, e) for s in range(blocks) for e in range(s + 1, int(ends[s]) + 1) if ends_ok is None or ends_ok[e]],
            dtype=int,
        ).reshape(-1, 2)
    index = np.arange(blocks)

    def key_of(t: np.ndarray, c: np.ndarray) -> tuple[Any, ...]:
        return (int(coverage_score(c, replicas)), *np.round(np.sort(t), 9))

    current = key_of(thr, cov)
    for _ in range(passes):
        moved = False
        for address in sorted(spans, key=lambda a: (nodes[a].throughput, a)):
            win = windows[address]
            if not len(win):
                continue
            old = spans[address]
            old_add = nodes[address].throughput / (cost_prefix[old.end] - cost_prefix[old.start])
            base_t = thr.copy()
            base_t[old.start : old.end] -= old_add
            base_c = cov.copy()
            base_c[old.start : old.end] -= 1
            mask = (index[None, :] >= win[:, :1]) & (index[None, :] < win[:, 1:])
            added = nodes[address].throughput / (cost_prefix[win[:, 1]] - cost_prefix[win[:, 0]])
            cand_t = np.round(np.sort(base_t[None, :] + mask * added[:, None], axis=1), 9)
            cand_c = coverage_score(base_c[None, :] + mask, replicas)
            # lexicographic argmax over (coverage, sorted throughputs): lexsort's last key is primary
            best = int(np.lexsort([cand_t[:, k] for k in range(blocks - 1, -1, -1)] + [cand_c])[-1])
            key = (int(cand_c[best]), *cand_t[best])
            if key > current:
                s, e = (int(v) for v in win[best])
                spans[address] = Span(s, e)
                thr[:] = base_t
                thr[s:e] += added[best]
                cov[:] = base_c
                cov[s:e] += 1
                current = key
                moved = True
        if not moved:
            joint = _best_joint_move(spans, nodes, thr, cov, cost_prefix, windows, replicas, current)
            if joint is None:
                break
            current = joint


JOINT_LIMIT = 250_000  # window combinations per pass up to which nodes are moved together


def _best_joint_move(
    spans: dict[str, Span],
    nodes: dict[str, NodeSpec],
    thr: np.ndarray,
    cov: np.ndarray,
    cost_prefix: np.ndarray,
    windows: dict[str, np.ndarray],
    replicas: int,
    current: tuple[Any, ...],
) -> tuple[Any, ...] | None:
    """Move two (then three) nodes at once, for plans where no single move helps but a joint one
    does (a swap, two neighbours shifting together). Only on small swarms: the work grows with
    the product of the nodes' window counts. Applies the best improving move in place and
    returns the new key, or None."""
    addresses = [a for a in sorted(spans) if len(windows[a])]
    blocks = len(thr)
    index = np.arange(blocks)
    masks = {a: (index[None, :] >= windows[a][:, :1]) & (index[None, :] < windows[a][:, 1:]) for a in addresses}
    adds = {a: nodes[a].throughput / (cost_prefix[windows[a][:, 1]] - cost_prefix[windows[a][:, 0]]) for a in addresses}
    for k in (2, 3):
        groups = list(itertools.combinations(addresses, k))
        if sum(np.prod([len(windows[a]) for a in g]) for g in groups) > JOINT_LIMIT:
            return None
        best_key, best_move = current, None
        for group in groups:
            t, c = thr.copy(), cov.copy()
            for address in group:
                old = spans[address]
                t[old.start : old.end] -= nodes[address].throughput / (cost_prefix[old.end] - cost_prefix[old.start])
                c[old.start : old.end] -= 1
            t, c = t[None, :], c[None, :]
            for address in group:  # cartesian product of the members' windows, row-major
                t = (t[:, None, :] + (masks[address] * adds[address][:, None])[None, :, :]).reshape(-1, blocks)
                c = (c[:, None, :] + masks[address][None, :, :]).reshape(-1, blocks)
            t = np.round(np.sort(t, axis=1), 9)
            c = coverage_score(c, replicas)
            top = int(np.lexsort([t[:, j] for j in range(blocks - 1, -1, -1)] + [c])[-1])
            key = (int(c[top]), *t[top])
            if key > best_key:
                picks = np.unravel_index(top, [len(windows[a]) for a in group])
                best_key, best_move = key, [(a, windows[a][i]) for a, i in zip(group, picks, strict=True)]
        if best_move is not None:
            for address, (s, e) in best_move:
                old = spans[address]
                thr[old.start : old.end] -= nodes[address].throughput / (cost_prefix[old.end] - cost_prefix[old.start])
                cov[old.start : old.end] -= 1
                spans[address] = Span(int(s), int(e))
                thr[s:e] += nodes[address].throughput / (cost_prefix[e] - cost_prefix[s])
                cov[s:e] += 1
            return tuple(best_key)
    return None


def plan_even(nodes: list[str], blocks: int) -> dict[str, Span]:
    """Consecutive spans of near-equal length, one per node (at most one node per block)."""
    nodes = sorted(nodes)[:blocks]
    if not nodes:
        return {}
    return {node: Span(blocks * i // len(nodes), blocks * (i + 1) // len(nodes)) for i, node in enumerate(nodes)}


def plan_pipeline(nodes: list[str], blocks: int, stages: int = 3) -> dict[str, Span]:
    """Devnet-sized plan: the first `stages` nodes (by address) split the blocks evenly; every
    further node replicates a span, middle spans first (they have neighbours on both sides)."""
    nodes = sorted(nodes)
    base = plan_even(nodes[:stages], blocks)
    spans = list(base.values())
    if not spans:
        return {}
    middle_first = sorted(range(len(spans)), key=lambda i: (abs(i - (len(spans) - 1) / 2), i))
    for j, node in enumerate(nodes[len(spans) :]):
        base[node] = spans[middle_first[j % len(spans)]]
    return base


def plan_even_replicated(nodes: list[NodeSpec], model: ModelSpec, replicas: int = 2) -> Plan:
    """The heterogeneity-blind baseline: `replicas` pipelines, nodes dealt round-robin, each
    pipeline split into equal spans (shrunk to fit memory where needed)."""
    ordered = sorted(nodes, key=lambda n: n.address)
    groups = [ordered[g::replicas] for g in range(replicas)]
    spans = {}
    block_mb = np.asarray(model.block_mb)
    for group in groups:
        for i, node in enumerate(group):
            start = model.blocks * i // len(group)
            end = max(start + 1, model.blocks * (i + 1) // len(group))
            fits = _longest_windows(node.memory_mb, block_mb)[start]
            if fits > start:
                spans[node.address] = Span(start, min(end, int(fits)))
    return evaluate(spans, {n.address: n for n in nodes}, model, replicas)
