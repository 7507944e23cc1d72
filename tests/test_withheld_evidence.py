"""Withholding evidence does not escape an audit, on the real stack: a stage that names its
transcript in the receipt it signs but never stores it (misbehave = "withhold") computes
correctly, yet with every stage audited the committee, having looked for the transcript for
the commit period, finds that stage wrong and it is slashed; the stages that kept their
evidence stand. (Members check missing evidence again before judging it: node.committee.)"""

from __future__ import annotations

import pytest

from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.protocol import JobStatus

pytestmark = pytest.mark.stack

MAX_FEE = 10**15
WITHHOLDER = 1


def test_a_stage_that_withholds_its_transcript_is_found_wrong_and_slashed(tmp_path):
    net = Network(
        tmp_path / "net",
        nodes=4,
        # stake to spare: the slash leaves it active, so nothing else moves during the test
        node_overrides={WITHHOLDER: {"misbehave": "withhold", "stake_wei": 5 * 10**18}},
    ).start()
    try:
        model_id, _ = net.publish("tiny-gpt2")
        net.wait_confirmed(model_id, 4)
        withholder = dev_account(2 + WITHHOLDER).address
        client = Client.from_deployment(dev_account(12), net.deployment)
        params = JobParams(kind="forward", audit_rate=1.0, avoid=net.rivals(model_id, withholder))
        stake_before = net.c.nodes.node(withholder).stake
        result = client.wait(client.submit(model_id, {"input_ids": [3, 1, 4, 1, 5]}, params, MAX_FEE), timeout_s=120)
        assert result.status == JobStatus.COMPLETED, result.record.abort_reason  # the work itself was right
        route = [s.node for s in result.record.route]
        assert withholder in route

        _, audits = net.resolved_audits([result.record.job_id], every_stage=True, timeout_s=180)
        for audit in audits[result.record.job_id]:
            assert audit.upheld == (audit.node == withholder), audit  # only the stage without evidence
        found = next(a for a in audits[result.record.job_id] if a.node == withholder)
        assert found.slashed > 0 and set(found.votes.values()) == {2}  # every member voted wrong
        assert net.c.nodes.node(withholder).stake == stake_before - found.slashed
    finally:
        net.stop()
