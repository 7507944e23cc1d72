"""Nodes on separate hosts: the chain (with the devnet's IPFS daemon), the coordinator and each
node (with its own IPFS daemon) in a network namespace of its own, joined by 100 Mbit/s veth
links; the data plane between nodes, and every process's traffic to the chain, cross relays that
add 20 ms each way (shardnet.hosts).
A generation across three such nodes gives the tokens of the same model run in one process, and
cutting a middle node's link mid-generation reroutes the job to a replica, which finishes it
with the same tokens."""

import time

import pytest
import torch

from node.executor import Executor
from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.hosts import Hosts
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.model.manifest import fetch_manifest
from shardnet.model.survey import greedy_spans
from shardnet.protocol import JobStatus, Span

pytestmark = pytest.mark.stack

MAX_FEE = 10**15
PROMPT = [101, 2023, 2897, 1997, 3671, 6681]
NEW_TOKENS = 32


@pytest.fixture(scope="module")
def spread(tmp_path_factory):
    hosts = Hosts("mh", rate_mbit=100, delay_ms=20).start()
    net = Network(tmp_path_factory.mktemp("multihost"), nodes=4, hosts=hosts, ipfs_timeout_s=30)
    try:
        net.start()
        net.model_id, net.manifest_cid = net.publish("demo-gpt2", quant="none")
        net.wait_confirmed(net.model_id, 4, timeout_s=180)  # three spans + a replica of the middle one
        net.client = Client.from_deployment(dev_account(12), net.deployment)
        yield net
    finally:
        net.stop()
        hosts.close()


def _in_process(net):
    """The same model, every block read back from IPFS, run greedily in this one process."""
    blocks = len(fetch_manifest(net.ipfs, net.manifest_cid).blocks)
    loaded = Executor(net.ipfs, 30.0).load(net.model_id, net.manifest_cid, Span(0, blocks))
    tokens, _ = greedy_spans([loaded.model], torch.tensor([PROMPT]), NEW_TOKENS)
    return tokens[0, len(PROMPT) :].tolist()


def test_generation_across_hosts_matches_one_process(spread):
    net = spread
    params = JobParams(kind="generate", max_new_tokens=NEW_TOKENS, wire="fp32")
    result = net.client.wait(net.client.submit(net.model_id, {"input_ids": PROMPT}, params, MAX_FEE), timeout_s=180)
    assert result.status == JobStatus.COMPLETED, result.record.abort_reason
    assert len(result.record.route) == 3
    assert result.output["tokens"] == _in_process(net)
    # every hop crossed a 20 ms link: the data plane's time shows it
    assert result.output["timing"]["data_plane_ms"] > NEW_TOKENS * 3 * 20


def test_link_cut_mid_generation_reroutes_and_finishes(spread):
    net = spread
    params = JobParams(kind="generate", max_new_tokens=NEW_TOKENS, wire="fp32")
    job_id = net.client.submit(net.model_id, {"input_ids": PROMPT}, params, MAX_FEE)
    deadline = time.monotonic() + 60
    while not (record := net.client.history(job_id)).route:
        assert time.monotonic() < deadline, "never routed"
        time.sleep(0.05)
    middle = record.route[1][0]
    index = [dev_account(2 + i).address for i in range(4)].index(middle)
    time.sleep(1.0)  # the generation is under way (each token crosses three 20 ms links)
    net.hosts.cut(net.placed[f"node{index}"])

    result = net.client.wait(job_id, timeout_s=180)
    assert result.status == JobStatus.COMPLETED, result.record.abort_reason
    assert result.record.reroutes == 1 and result.record.failed_nodes == [middle]
    assert result.record.route[1][0] != middle
    assert result.output["tokens"] == _in_process(net)
