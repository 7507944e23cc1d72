"""Evidence a node names before it is on IPFS survives the node's crash. A stage names its
transcript's CID in the receipt it signs before the bytes reach IPFS; until they do, they are
spooled on disk (node.spool), and a node killed in between stores them when it starts again, so
an audit of the job still finds them. Unit tests of the spool, and the whole path on the real
stack: a middle stage whose IPFS daemon is down serves a job, is killed with SIGKILL, and stores
its transcript once restarted."""

from __future__ import annotations

import os
import time

import pytest

from node.spool import Spool
from shardnet.chain import dev_account
from shardnet.cid import cid_v0
from shardnet.client import Client
from shardnet.errors import ShardnetError
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.protocol import JobStatus

MAX_FEE = 10**15


def test_the_spool_keeps_evidence_until_done_and_drops_damaged_files(tmp_path):
    spool = Spool(tmp_path / "unstored")
    a, b = os.urandom(300), os.urandom(200)
    spool.keep(5, cid_v0(a), "job-5-stage-1-transcript", a)
    spool.keep(5, cid_v0(a), "job-5-stage-1-transcript", a)  # asked twice: kept once
    spool.keep(6, cid_v0(b), "job-6-output.json", b)
    assert sorted(spool.pending()) == sorted(
        [(5, cid_v0(a), "job-5-stage-1-transcript", a), (6, cid_v0(b), "job-6-output.json", b)]
    )
    spool.done(5, cid_v0(a), "job-5-stage-1-transcript")
    assert spool.pending() == [(6, cid_v0(b), "job-6-output.json", b)]

    (tmp_path / "unstored" / f"7.{cid_v0(b)}.job-7-output.json").write_bytes(b[:-1])  # cut short
    (tmp_path / "unstored" / f"8.{cid_v0(a)}.job-8-output.json.tmp").write_bytes(a)  # a write never renamed
    assert spool.pending() == [(6, cid_v0(b), "job-6-output.json", b)]
    assert sorted(p.name for p in (tmp_path / "unstored").iterdir()) == [f"6.{cid_v0(b)}.job-6-output.json"]


@pytest.mark.stack
def test_a_transcript_named_before_a_crash_is_stored_when_the_node_starts_again(tmp_path):
    net = Network(tmp_path / "net", nodes=3, own_ipfs=True).start()
    try:
        model_id, _ = net.publish("tiny-gpt2")
        net.wait_confirmed(model_id, 3)
        spans = {n: net.c.models.assignment(model_id, n) for n in net.c.models.assigned_nodes(model_id)}
        middle_address = sorted(spans, key=lambda n: spans[n].start)[1]
        middle = next(i for i in range(3) if dev_account(2 + i).address == middle_address)
        net.kill_ipfs(middle)  # what the middle stage names cannot reach IPFS now

        client = Client.from_deployment(dev_account(12), net.deployment)
        params = JobParams(kind="generate", max_new_tokens=3)
        result = client.wait(client.submit(model_id, {"input_ids": [1, 2, 3]}, params, MAX_FEE), timeout_s=90)
        assert result.status == JobStatus.COMPLETED, result.record.abort_reason
        assert result.output is not None
        transcript = result.output["transcripts"][1]  # named in the middle stage's signed receipt
        spooled = net.home / f"node{middle}-state" / "unstored"
        assert any(transcript in p.name for p in spooled.iterdir())

        net.kill(f"node{middle}")  # SIGKILL, the transcript still unstored
        net.restart_ipfs(middle)
        net.start_node(middle)
        deadline, data = time.monotonic() + 90, None
        while data is None:
            try:  # through the devnet's own daemon: bitswap from the restarted node's
                data = net.ipfs.cat(transcript, timeout=3)
            except ShardnetError:
                assert time.monotonic() < deadline, f"transcript {transcript} never reached IPFS; logs in {net.home}"
                time.sleep(1)
        assert cid_v0(data) == transcript
        deadline = time.monotonic() + 30
        while any(transcript in p.name for p in spooled.iterdir()):  # and it left the spool
            assert time.monotonic() < deadline
            time.sleep(0.5)
    finally:
        net.stop()
