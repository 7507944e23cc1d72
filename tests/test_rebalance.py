"""Rebalancing on the real stack: a coordinator with the throughput planner serves a model on
three slow nodes; two fast nodes join; the coordinator re-plans from its measurements, moves
spans to them (recorded on-chain, confirmed by the nodes), and the measured job latency drops."""

import statistics
import time

import httpx
import pytest

from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.jobs import JobParams
from shardnet.localnet import Network

pytestmark = pytest.mark.stack
MAX_FEE = 10**15
SLOW, FAST = 25.0, 100  # slow nodes emulate a machine 25x slower; fast ones declare 10x the compute score


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    network = Network(
        tmp_path_factory.mktemp("rebalance"),
        nodes=3,
        coordinator_args=("--planner", "throughput", "--min-stages", "3", "--rebalance-interval", "2"),
        node_overrides={
            0: {"slowdown": SLOW},
            1: {"slowdown": SLOW},
            2: {"slowdown": SLOW},
            3: {"compute_score": FAST},
            4: {"compute_score": FAST},
        },
    ).start()
    try:
        network.model_id, _ = network.publish("demo-gpt2")
        network.wait_confirmed(network.model_id, 3)
        network.client = Client.from_deployment(dev_account(12), network.deployment)
        yield network
    finally:
        network.stop()


def timed_jobs(client, model_id, n=4):
    """Seconds from posting to the result on-chain, and the routes taken."""
    seconds, routes = [], []
    for k in range(n):
        started = time.monotonic()
        result = client.wait(
            client.submit(model_id, {"input_ids": [101, 2023 + k, 2003, 1037]}, JobParams(max_new_tokens=12), MAX_FEE),
            timeout_s=120,
        )
        seconds.append(time.monotonic() - started)
        routes.append([s[0] for s in result.record.route])
    return seconds, routes


def test_two_fast_nodes_join_and_latency_drops(net):
    slow = {dev_account(2 + i).address for i in range(3)}
    before, routes = timed_jobs(net.client, net.model_id)
    assert all(set(r) <= slow for r in routes)
    measured = [httpx.get(f"http://127.0.0.1:{net.node_ports[i]}/health").json()["ms_per_block"] for i in range(3)]
    assert all(m and m > 0 for m in measured)  # the nodes measure themselves while serving

    for _ in range(2):
        net.add_node()
    fast = {dev_account(5).address, dev_account(6).address}
    deadline = time.monotonic() + 120
    while True:  # the coordinator assigns spans to the newcomers and they confirm them
        assigned = {n: net.c.models.assignment(net.model_id, n) for n in net.c.models.assigned_nodes(net.model_id)}
        if all(n in assigned and assigned[n].confirmed for n in fast):
            break
        assert time.monotonic() < deadline, f"the fast nodes were not assigned: {assigned}"
        time.sleep(0.5)
    moved = [
        e
        for e in net.c.models.contract.events.ShardAssigned().get_logs(from_block=net.deployment.deploy_block)
        if e.args.node in fast
    ]
    assert moved, "the spans given to the newcomers are recorded on-chain"

    time.sleep(3)  # let every moved node reload and confirm, and the probes see the newcomers
    after, routes = timed_jobs(net.client, net.model_id)
    assert any(set(r) & fast for r in routes), routes
    ratio = statistics.mean(after) / statistics.mean(before)
    print(
        f"\njob latency before {statistics.mean(before):.2f} s, after two fast nodes joined "
        f"{statistics.mean(after):.2f} s (ratio {ratio:.2f})"
    )
    assert ratio < 0.9
