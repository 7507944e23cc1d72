"""A job whose last stage dies with no replica to take over expires on the real stack: the stages
that did their part prove delivery with their own receipts after the deadline (nobody chooses
for them), the coordinator settles the job once the claim window is over, the delivering stages
are paid and only the dead stage is recorded failed."""

from __future__ import annotations

import time

import pytest

from shardnet.audit import reconcile
from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.events import EventReader
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.protocol import JobStatus

pytestmark = pytest.mark.stack  # starts its own chain, IPFS daemon and node processes

MAX_FEE = 10**15


def test_overdue_job_pays_the_stages_that_delivered(tmp_path):
    # nodes 20x slower than this machine: the 64-token generation takes seconds, so the last
    # stage is killed while it runs (at full speed it can finish before the route is even seen)
    net = Network(tmp_path / "net", node_overrides={i: {"slowdown": 20.0} for i in range(3)}).start()
    try:
        model_id, _ = net.publish("tiny-gpt2")
        net.wait_confirmed(model_id, 3)
        client = Client.from_deployment(dev_account(12), net.deployment)
        params = JobParams(kind="generate", max_new_tokens=64)
        job_id = client.submit(model_id, {"input_ids": [3, 1, 4]}, params, MAX_FEE, ttl_s=15)
        deadline = time.monotonic() + 30
        while not (record := client.history(job_id)).route:
            assert time.monotonic() < deadline, "the job was never routed"
            time.sleep(0.05)
        last = record.route[-1].node
        net.kill(f"node{[dev_account(2 + i).address for i in range(3)].index(last)}")  # no replica holds its span

        reader = EventReader(net.chain, [net.c.market.address])
        deadline = time.monotonic() + 90
        while True:  # stages 0 and 1 claim delivery once the deadline has passed
            claims = [
                e for e in reader.fetch(net.deployment.deploy_block, reader.head()) if e.name == "DeliveryClaimed"
            ]
            if len({e.args["stage"] for e in claims if e.args["jobId"] == job_id}) == 2:
                break
            assert time.monotonic() < deadline, f"stages did not claim delivery: {client.history(job_id)}"
            time.sleep(0.5)
        assert client.history(job_id).status == JobStatus.ROUTED  # no abort after the deadline

        net.advance(net.c.market.claim_window_s() + 1)
        deadline = time.monotonic() + 30
        while (done := client.history(job_id)).status != JobStatus.EXPIRED:  # the coordinator expires it
            assert time.monotonic() < deadline, f"nobody expired the job: {done}"
            time.sleep(0.5)
        assert done.failed_nodes == [last]
        assert done.payouts == {s.node: s.fee for s in record.route[:2]}
        assert done.refunded == MAX_FEE - sum(s.fee for s in record.route[:2])
        # recorded failed for this job: the silent stage only (audits of other jobs record their own)
        failed = [e.args["node"] for e in EventReader(net.chain).poll() if e.name == "FailureRecorded"]
        assert failed.count(last) == net.c.nodes.failures(last) >= 1
        recorded = [
            e.args["node"]
            for e in EventReader(net.chain).poll()
            if e.name == "FailureRecorded" and e.args["jobId"] == job_id
        ]
        assert recorded == [last]
    finally:
        net.stop()


def test_an_abort_after_the_work_is_done_still_pays_the_stages(tmp_path):
    """Stage 0, colluding with the client, aborts the job once every stage has done its work (when
    the last stage asks for its receipt) so that the client would get the result for nothing. The
    abort only opens the claim window: every stage that delivered claims on its own, and once
    the window is over the coordinator settles the job: the stages are paid, the client gets back
    only what they did not earn."""
    every_stage_0_aborts_late = {i: {"misbehave": "abort_late"} for i in range(3)}
    net = Network(tmp_path / "net", node_overrides=every_stage_0_aborts_late).start()
    try:
        model_id, _ = net.publish("tiny-gpt2")
        net.wait_confirmed(model_id, 3)
        client = Client.from_deployment(dev_account(12), net.deployment)
        params = JobParams(kind="generate", max_new_tokens=4)
        job_id = client.submit(model_id, {"input_ids": [3, 1, 4]}, params, MAX_FEE)
        aborted = client.wait(job_id, timeout_s=60)
        assert aborted.status == JobStatus.ABORTING and aborted.record.abort_reason == "input is malformed"
        route = aborted.record.route
        assert len(route) == 3

        reader = EventReader(net.chain, [net.c.market.address])
        deadline = time.monotonic() + 30
        while True:  # every stage delivered, so every stage claims
            events = reader.fetch(net.deployment.deploy_block, reader.head())
            claimed = {e.args["stage"] for e in events if e.name == "DeliveryClaimed" and e.args["jobId"] == job_id}
            if claimed == {0, 1, 2}:
                break
            assert time.monotonic() < deadline, f"stages claimed only {claimed}: logs in {net.home}"
            time.sleep(0.5)

        assert reconcile(net.chain, net.ledger()) == []  # the aborting job's escrow is still held, to the wei
        net.advance(net.c.market.claim_window_s() + 1)
        done = client.wait(job_id, timeout_s=30, until=(JobStatus.ABORTED,))  # the coordinator settles it
        fees = sum(s.fee for s in route)
        assert done.record.payouts == {s.node: s.fee for s in route}
        assert done.record.refunded == MAX_FEE - fees  # no free result: the client pays every stage
        assert done.record.failed_nodes == []
    finally:
        net.stop()
