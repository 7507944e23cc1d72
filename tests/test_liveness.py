"""Registered is not alive, on the real stack: the coordinator plans spans only over nodes whose
agents answer, plans a model again when a node holding one of its spans stops, and a model
published while a node is down is never assigned to it; jobs on both models complete. When the
node answers again, the model planned away from it is planned over it again."""

from __future__ import annotations

import time

import pytest

from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.protocol import JobStatus

pytestmark = pytest.mark.stack  # starts its own chain, IPFS daemon and node processes

MAX_FEE = 10**15


def _holders(net: Network, model_id: int) -> dict[str, bool]:
    """Nodes holding a span of the model (released ones hold none), and whether they confirmed it."""
    spans = {n: net.c.models.assignment(model_id, n) for n in net.c.models.assigned_nodes(model_id)}
    return {n: a.confirmed for n, a in spans.items() if a.end}


def test_the_coordinator_plans_only_over_nodes_that_answer(tmp_path):
    net = Network(tmp_path / "net", nodes=3, coordinator_args=("--replan-after", "3")).start()
    try:
        first, _ = net.publish("tiny-gpt2")
        net.wait_confirmed(first, 3)
        client = Client.from_deployment(dev_account(12), net.deployment)
        stopped = dev_account(2 + 2).address
        net.kill("node2")  # still registered and staked: only probes can tell

        deadline = time.monotonic() + 60
        while stopped in (holders := _holders(net, first)) or not holders or not all(holders.values()):
            assert time.monotonic() < deadline, f"model {first} was not planned again without the stopped node"
            time.sleep(0.5)
        second, _ = net.publish("tiny-llama")
        deadline = time.monotonic() + 60
        while not (holders := _holders(net, second)) or not all(holders.values()):
            assert time.monotonic() < deadline, f"model {second} was not served: {holders}"
            time.sleep(0.5)
        assert stopped not in holders  # never assigned to a node that does not answer

        for model_id in (first, second):
            params = JobParams(kind="generate", max_new_tokens=3)
            result = client.wait(client.submit(model_id, {"input_ids": [1, 2, 3]}, params, MAX_FEE), timeout_s=90)
            assert result.status == JobStatus.COMPLETED, result.record.abort_reason
            assert stopped not in {s.node for s in result.record.route}

        net.start_node(2)  # back: the model planned away from it is planned over it again
        net.wait_ready(2)
        deadline = time.monotonic() + 60
        while not (holders := _holders(net, first)).get(stopped) or not all(holders.values()):
            assert time.monotonic() < deadline, f"model {first} was not planned again over the node back: {holders}"
            time.sleep(0.5)
        params = JobParams(kind="generate", max_new_tokens=3)
        result = client.wait(client.submit(first, {"input_ids": [1, 2, 3]}, params, MAX_FEE), timeout_s=90)
        assert result.status == JobStatus.COMPLETED, result.record.abort_reason
        assert stopped in {s.node for s in result.record.route} and len(result.record.route) == 3
    finally:
        net.stop()
