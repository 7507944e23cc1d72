"""Planner and router speed and quality on synthetic heterogeneous swarms (10x spread in
throughput and memory). Prints `name: value` lines measured in one run."""

from __future__ import annotations

import random
import statistics
import time

from coordinator.planner import ModelSpec, NodeSpec, plan, plan_even_replicated
from coordinator.router import Candidate, RouteWeights, route


def swarm(rng: random.Random, n: int, spread: float = 10.0, block_mb: float = 100.0) -> list[NodeSpec]:
    # memory for 4..40 blocks, throughput 1..10 block-forwards/s
    return [
        NodeSpec(
            f"0x{i:040x}",
            rng.uniform(4, 4 * spread) * block_mb,
            rng.uniform(1, spread),
            latency_ms=rng.uniform(1, 50),
            reputation=rng.uniform(0.5, 1),
        )
        for i in range(n)
    ]


def main() -> None:
    rng = random.Random(0)
    model = ModelSpec.uniform(80)
    nodes = swarm(rng, 1000)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        big = plan(nodes, model, replicas=2)
        times.append((time.perf_counter() - t) * 1000)
    print(f"plan_ms_1000_nodes_80_blocks: {statistics.median(times):.1f}")
    print(f"plan_min_replicas_1000_nodes: {big.min_replicas}")

    candidates = [
        Candidate(a, s.start, s.end, 10**9, nodes[i].latency_ms, 1000 / nodes[i].throughput, nodes[i].reputation)
        for i, (a, s) in enumerate(big.spans.items())
    ]
    weights = RouteWeights(latency=1.0, price=0.5, trust=10.0, min_reputation=0.6)
    times = []
    for _ in range(20):
        t = time.perf_counter()
        stages = route(candidates, model.blocks, weights)
        times.append((time.perf_counter() - t) * 1000)
    print(f"route_ms_1000_nodes: {statistics.median(times):.2f}")
    print(f"route_stages_1000_nodes: {len(stages)}")

    ratios = []
    for seed in range(5):
        r = random.Random(100 + seed)
        small = swarm(r, 40)
        m = ModelSpec.uniform(24)
        ratios.append(plan(small, m, 2).bottleneck / plan_even_replicated(small, m, 2).bottleneck)
    print(f"planned_vs_even_split_throughput: {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
