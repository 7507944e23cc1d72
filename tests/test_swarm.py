"""IPFS as a swarm, on the real stack: each node runs its own IPFS daemon, finds its peers from
the deployment file and the chain, fetches its blocks by CID from whichever daemon holds them
(bitswap), pins what it serves and serves it onward once the publisher's daemon is gone."""

import asyncio

import pytest
import torch

from node.executor import Executor
from node.settings import NodeSettings
from node.swarm import Swarm, peer_of
from shardnet import services
from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.errors import ConfigError
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.model.manifest import fetch_manifest
from shardnet.model.shards import span_cids
from shardnet.model.survey import greedy_spans
from shardnet.protocol import JobStatus, Span
from shardnet.storage import IpfsClient
from shardnet.tools import free_port
from tests.helpers import node_metric

pytestmark = pytest.mark.stack


def _daemon(home, name):
    port = free_port()
    record = services.start_ipfs_daemon(home / name, port, "/ip4/127.0.0.1/tcp/0", home / f"{name}.log")
    return record, IpfsClient(f"http://127.0.0.1:{port}", timeout=10)


def test_blocks_move_peer_to_peer_and_are_served_onward(tmp_path):
    publisher, publisher_ipfs = _daemon(tmp_path, "publisher")
    publisher_addr = publisher_ipfs.swarm_addrs()[0]
    net = Network(tmp_path / "net", nodes=1, own_ipfs=True, node_overrides={0: {"ipfs_peers": [publisher_addr]}})
    newcomer = None
    try:
        net.start()
        # the model is published on a daemon no node shares; the devnet's daemon (clients,
        # coordinator) is connected to it as a publisher's would be
        net.ipfs.connect(publisher_addr)
        model_id, manifest_cid = net.publish("tiny-gpt2", ipfs=publisher_ipfs)
        net.wait_confirmed(model_id, 1)
        node_ipfs = IpfsClient(net.ipfs_apis[0])
        assert node_ipfs.api_url != net.deployment.ipfs_api
        manifest = fetch_manifest(node_ipfs, manifest_cid)
        whole = Span(0, len(manifest.blocks))
        assert all(node_ipfs.pinned(cid) for cid in span_cids(manifest, whole))
        # the node's daemon joined the devnet's (deployment file) and the publisher's (ipfs_peers)
        assert {peer_of(a) for a in net.deployment.ipfs_peers + [publisher_addr]} <= set(node_ipfs.peers())

        client = Client.from_deployment(dev_account(12), net.deployment)
        prompt = [5, 17, 42, 7]
        params = JobParams(kind="generate", max_new_tokens=6)
        result = client.wait(client.submit(model_id, {"input_ids": prompt}, params, 10**15), timeout_s=120)
        assert result.status == JobStatus.COMPLETED, result.record.abort_reason
        assert len(result.output["tokens"]) == 6
        # a one-stage route: every token came round inside the node (no link bytes), and each of
        # the six steps (the prompt's, then one per fed-back token) was timed once
        assert node_metric(net.node_ports[0], "shardnet_bytes_in_total") == 0
        assert node_metric(net.node_ports[0], 'shardnet_stage_seconds_count{kind="generate"}') == 6

        # the publisher leaves; a newcomer that knows only the chain gets every block from the node
        services.stop(publisher)
        newcomer, newcomer_ipfs = _daemon(tmp_path, "newcomer")
        swarm = Swarm(newcomer_ipfs, dev_account(19).address, net.ledger(), [])
        assert asyncio.run(swarm.join()) == 1
        assert newcomer_ipfs.peers() == [node_ipfs.peer_id()]
        asked, advertised = [], swarm._advertised

        async def counted(client, node, endpoint):
            asked.append(node)
            return await advertised(client, node, endpoint)

        swarm._advertised = counted  # the next round asks no node whose daemons are all connected
        assert asyncio.run(swarm.join()) == 1 and asked == []
        loaded = Executor(newcomer_ipfs, 20.0).load(model_id, manifest_cid, whole)
        # the newcomer's copy (every block re-hashed against its CID) gives the job's tokens
        tokens, _ = greedy_spans([loaded.model], torch.tensor([prompt]), 6)
        assert tokens[0, len(prompt) :].tolist() == result.output["tokens"]
    finally:
        if newcomer is not None:
            services.stop(newcomer)
        services.stop(publisher)
        net.stop()


def test_node_settings_refuse_a_peer_that_is_not_a_multiaddr(tmp_path):
    path = tmp_path / "node.toml"
    path.write_text('dev_account = 2\nipfs_peers = ["127.0.0.1:4001"]\n')
    with pytest.raises(ConfigError, match="ipfs_peers.*multiaddr"):
        NodeSettings.load(path)
