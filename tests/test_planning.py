"""Planner and router on synthetic heterogeneous swarms (10x spread in throughput and memory),
checked against brute force on small instances."""

import itertools
import random

import pytest

from coordinator.planner import ModelSpec, NodeSpec, evaluate, plan, plan_even_replicated
from coordinator.router import Candidate, RouteWeights, route, route_any, stage_cost
from shardnet.protocol import Assignment, Span


def swarm(rng, n, spread=10.0):
    return [
        NodeSpec(
            f"0x{i:040x}",
            rng.uniform(1, spread) * 100 // 100 * 100,
            rng.uniform(1, spread),
            latency_ms=rng.uniform(1, 50),
            reputation=rng.uniform(0.5, 1.0),
        )
        for i in range(n)
    ]


def brute_force_plan(nodes, model, replicas):
    options = []
    for n in nodes:
        opts = [None] + [
            Span(s, e)
            for s in range(model.blocks)
            for e in range(s + 1, model.blocks + 1)
            if sum(model.block_mb[s:e]) <= n.memory_mb
        ]
        options.append(opts)
    by = {n.address: n for n in nodes}
    best = 0.0
    for combo in itertools.product(*options):
        spans = {n.address: s for n, s in zip(nodes, combo, strict=True) if s is not None}
        best = max(best, evaluate(spans, by, model, replicas).bottleneck)
    return best


def test_plans_are_feasible_and_close_to_brute_force():
    rng = random.Random(7)
    ratios = []
    for _ in range(40):
        nodes = swarm(rng, rng.randint(2, 4))
        model = ModelSpec(tuple([100.0] * rng.randint(3, 5)), tuple(rng.choice([1.0, 2.0]) for _ in range(5))[:5])
        model = ModelSpec(model.block_mb, model.block_cost[: len(model.block_mb)])
        replicas = rng.choice([1, 2])
        optimum = brute_force_plan(nodes, model, replicas)
        got = plan(nodes, model, replicas)
        for address, span in got.spans.items():  # every span fits its node's memory
            node = next(n for n in nodes if n.address == address)
            assert sum(model.block_mb[span.start : span.end]) <= node.memory_mb
        if optimum == 0:
            assert got.bottleneck == 0
            continue
        assert got.min_replicas >= replicas  # feasible whenever brute force is
        ratios.append(got.bottleneck / optimum)
    assert min(ratios) >= 0.95, sorted(ratios)[:5]  # every plan within 5% of the optimum


def test_five_node_swarms_within_five_percent_of_brute_force():
    """Beyond the reach of the planner's three-node joint moves: five nodes."""
    rng = random.Random(11)
    for _ in range(2):
        nodes = swarm(rng, 5)
        model = ModelSpec((100.0,) * 4, tuple(rng.choice([1.0, 2.0]) for _ in range(4)))
        replicas = rng.choice([1, 2])
        optimum = brute_force_plan(nodes, model, replicas)
        got = plan(nodes, model, replicas)
        assert optimum == 0 or got.bottleneck >= 0.95 * optimum, (got, optimum)


def test_planned_beats_even_split_on_a_heterogeneous_swarm():
    rng = random.Random(3)
    nodes = swarm(rng, 60)
    model = ModelSpec.uniform(24, block_mb=100.0)
    planned = plan(nodes, model, replicas=2)
    even = plan_even_replicated(nodes, model, replicas=2)
    assert planned.min_replicas >= 2
    assert planned.bottleneck >= 1.5 * even.bottleneck


def brute_force_route(candidates, blocks, w):
    best = None
    usable = [c for c in candidates if c.address not in w.avoid and c.reputation >= w.min_reputation]

    def extend(p, chain, cost):
        nonlocal best
        if p == blocks:
            if best is None or cost < best[0] - 1e-9:
                best = (cost, chain)
            return
        for c in usable:
            if c.start <= p < c.end:
                extend(c.end, chain + [(c.address, p, c.end)], cost + stage_cost(c, p, w))

    extend(0, [], 0.0)
    return best


@pytest.mark.parametrize("seed", range(25))
def test_routes_are_optimal_for_the_stated_cost(seed):
    rng = random.Random(seed)
    blocks = rng.randint(3, 7)
    candidates = []
    for i in range(rng.randint(2, 6)):
        s = rng.randrange(blocks)
        e = rng.randint(s + 1, blocks)
        candidates.append(
            Candidate(
                f"0x{i:040x}",
                s,
                e,
                rng.randint(1, 10) * 10**9,
                rng.uniform(1, 40),
                rng.uniform(1, 20),
                rng.uniform(0.3, 1),
            )
        )
    w = RouteWeights(
        latency=rng.uniform(0, 2),
        price=rng.uniform(0, 2),
        trust=rng.uniform(0, 50),
        min_reputation=rng.choice([0.0, 0.5]),
    )
    got = route(candidates, blocks, w)
    expected = brute_force_route(candidates, blocks, w)
    if expected is None:
        assert got is None
        return
    by = {c.address: c for c in candidates}
    cost = sum(stage_cost(by[s.node], s.start, w) for s in got)
    assert abs(cost - expected[0]) <= 1e-9
    assert [s.start for s in got] == sorted(s.start for s in got) and got[-1].end == blocks and got[0].start == 0
    assert route(candidates, blocks, w) == got  # deterministic


def test_router_hard_limits():
    a = Candidate("0xa", 0, 4, 10**9, 5, 1, 0.9)
    b = Candidate("0xb", 0, 2, 10**8, 50, 1, 0.4)
    c = Candidate("0xc", 2, 4, 10**8, 50, 1, 0.9)
    fast = route([a, b, c], 4, RouteWeights(latency=1))
    assert [s.node for s in fast] == ["0xa"]
    cheap = route([a, b, c], 4, RouteWeights(latency=0, price=1))
    assert [s.node for s in cheap] == ["0xb", "0xc"]
    assert route([a, b, c], 4, RouteWeights(avoid=frozenset({"0xa"}), min_reputation=0.5)) is None
    assert [s.node for s in route([a, b, c], 4, RouteWeights(latency=1, max_fee=10**9))] == ["0xb", "0xc"]
    assert route([a, b, c], 4, RouteWeights(max_fee=10**8)) is None


def test_route_any_uses_whole_confirmed_spans_only():
    def span(start: int, end: int, confirmed: bool = True) -> Assignment:
        return Assignment(start, end, confirmed, "0xcoordinator")

    spans = {"0xa": span(0, 3), "0xb": span(3, 6, confirmed=False), "0xc": span(3, 6), "0xd": span(2, 6)}
    stages = route_any(spans, 6, 5)
    assert stages is not None
    assert [(s.node, s.start, s.end, s.fee) for s in stages] == [("0xa", 0, 3, 15), ("0xc", 3, 6, 15)]
    assert route_any({"0xa": span(0, 3), "0xd": span(2, 6)}, 6, 5) is None  # would enter 0xd part-way
    assert route_any({"0xa": span(0, 3)}, 6, 5) is None


def test_pipeline_plan_replicates_middle_spans_first():
    from coordinator.planner import plan_pipeline

    plan = plan_pipeline(["0xa", "0xb", "0xc", "0xd", "0xe"], 6)
    assert [plan[n] for n in ("0xa", "0xb", "0xc")] == [Span(0, 2), Span(2, 4), Span(4, 6)]
    assert plan["0xd"] == Span(2, 4) and plan["0xe"] in (Span(0, 2), Span(4, 6))


def test_tiled_plans_keep_spans_on_the_boundaries():
    """The throughput coordinator tiles the model so every route chains whole spans."""
    rng = random.Random(5)
    nodes = swarm(rng, 7)
    model = ModelSpec.uniform(8, block_mb=100.0)
    boundaries = (0, 2, 5, 8)
    got = plan(nodes, model, replicas=2, max_span=3, boundaries=boundaries)
    assert got.spans and got.min_replicas >= 1
    assert all(s.start in boundaries and s.end in boundaries for s in got.spans.values()), got.spans
    slow = [NodeSpec(f"0x{i:040x}", 10_000, 1.0) for i in range(3)]
    fast = [NodeSpec(f"0x{9:039x}{i}", 10_000, 10.0) for i in range(2)]
    before = plan(slow, model, replicas=2, max_span=3, boundaries=boundaries)
    after = plan(slow + fast, model, replicas=2, max_span=3, boundaries=boundaries)
    assert after.slowest > before.slowest and {f.address for f in fast} <= set(after.spans)
