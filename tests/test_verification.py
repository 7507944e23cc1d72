"""Re-executing stages from their transcripts on the real stack: nodes that serve garbage,
perturbed activations or wrong tokens are caught at the stage where they cheated; the honest
stages of the same jobs pass. (Honest networks are checked stage by stage in test_network.)"""

from __future__ import annotations

import json

import pytest

from node.executor import Executor
from node.verifier import check_job
from shardnet.chain import dev_account
from shardnet.client import Client, JobResult
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.protocol import JobStatus
from shardnet.transcripts import Transcript, TranscriptError
from tests.conftest import run_cli

pytestmark = pytest.mark.stack  # starts its own chain, IPFS daemon and node processes

MAX_FEE = 10**15
MODES = {0: "garbage", 1: "perturb", 2: "wrong_token"}


@pytest.fixture(scope="module")
def cheats(tmp_path_factory):
    # staked well above the minimum: audits (10% of stages on the devnet) slash these cheaters, and
    # they must stay active for the checks below
    overrides = {i: {"misbehave": m, "stake_wei": 10 * 10**18} for i, m in MODES.items()}
    network = Network(tmp_path_factory.mktemp("cheats"), node_overrides=overrides).start()
    network.model_id, network.manifest_cid = network.publish("tiny-gpt2")
    network.wait_confirmed(network.model_id, 3)
    network.client = Client.from_deployment(dev_account(12), network.deployment)
    yield network
    network.stop()


def verdicts(net: Network, result: JobResult) -> list:
    assert result.output is not None
    return check_job(Executor(net.ipfs, 10.0), result.record, net.manifest_cid, result.output)


def expected_dishonest(mode: str, last: bool, kind: str) -> bool | None:
    """Whether a node in `mode` corrupts its stage (None: its corruption may not change the claim)."""
    if mode == "garbage":
        return True
    if mode == "perturb":
        return None if last and kind == "generate" else True  # 1% noise on logits may keep the argmax
    return last and kind == "generate"  # wrong_token


def test_cheating_stages_are_caught_and_honest_ones_pass(cheats):
    node_mode = {dev_account(2 + i).address: m for i, m in MODES.items()}
    jobs = []
    for i, wire in enumerate(["int8", "fp32", "int8"]):
        params = JobParams(kind="generate", max_new_tokens=5, wire=wire)
        jobs.append((params, cheats.client.submit(cheats.model_id, {"input_ids": [5 + i, 9, 2]}, params, MAX_FEE)))
    params = JobParams(kind="forward", wire="int8")
    jobs.append((params, cheats.client.submit(cheats.model_id, {"input_ids": [3, 1, 4, 1, 5]}, params, MAX_FEE)))
    caught = 0
    for params, job_id in jobs:
        result = cheats.client.wait(job_id, timeout_s=120)
        assert result.status == JobStatus.COMPLETED, result.record.abort_reason
        route = result.record.route
        for k, verdict in enumerate(verdicts(cheats, result)):
            want = expected_dishonest(node_mode[route[k].node], k == len(route) - 1, params.kind)
            if want is not None:
                assert verdict.honest is not want, (job_id, k, node_mode[route[k].node], verdict)
                caught += want
            assert verdict.messages >= 1
    assert caught >= len(jobs)  # the garbage node is on every route


def test_a_transcript_that_does_not_match_its_receipt_is_refused(cheats):
    params = JobParams(kind="forward", wire="fp32")
    result = cheats.client.wait(cheats.client.submit(cheats.model_id, {"input_ids": [7, 7]}, params, MAX_FEE))
    assert result.output is not None
    r = result.record
    r.receipts[1] = r.receipts[1]._replace(input_hash=b"\x01" * 32)  # as if stage 1 had signed for other input
    got = check_job(Executor(cheats.ipfs, 10.0), r, cheats.manifest_cid, result.output)
    assert not got[1].honest and "do not give the receipt's input hash" in got[1].reason
    with pytest.raises(TranscriptError):
        Transcript.decode(json.dumps(result.output).encode())


def test_operator_and_auditor_commands_name_the_cheating_stage(cheats):
    params = JobParams(kind="generate", max_new_tokens=3, wire="int8")
    job_id = cheats.client.submit(cheats.model_id, {"input_ids": [2, 7, 1]}, params, MAX_FEE)
    result = cheats.client.wait(job_id, timeout_s=120)
    assert result.status == JobStatus.COMPLETED
    env = {"SHARDNET_DEPLOYMENT": str(cheats.deployment_path)}
    out = run_cli("node", "verify", str(job_id), "--json", env=env, timeout=300)
    assert out.returncode == 2, out.stderr
    rows = json.loads(out.stdout)
    garbage_node = dev_account(2).address  # node 0 serves garbage wherever it sits on the route
    [garbage] = [r for r in rows if r["node"] == garbage_node]
    assert not garbage["honest"] and garbage["reason"], garbage
    db = cheats.home / "index.sqlite"
    out = run_cli("audit", "verify-transcripts", "--db", str(db), env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr  # transcripts match receipts: cheats are in the compute
    assert "transcripts of" in out.stdout
