"""Hardhat users: the same sources compile offline, and a Hardhat node can be the chain."""

import json
import os
import subprocess
import time

import pytest

from shardnet import compiler, tools
from shardnet.chain import Chain, dev_account
from shardnet.devnet import DevnetSettings, deploy_contracts
from shardnet.errors import ChainUnavailable
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.stack  # starts its own chain, IPFS daemon or node processes

ENV = {**os.environ, "HARDHAT_DISABLE_TELEMETRY_PROMPT": "true"}


def test_hardhat_compiles_the_same_abis_offline():
    result = subprocess.run(
        [tools.hardhat_binary(), "compile", "--quiet"], cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    for name in compiler.CONTRACTS:
        path = REPO / "build/hardhat/artifacts/contracts" / f"{name}.sol" / f"{name}.json"
        hardhat_abi = json.loads(path.read_text())["abi"]
        ours = compiler.compile_contracts()[name].abi
        key = lambda e: json.dumps(e, sort_keys=True)  # noqa: E731
        assert sorted(map(key, hardhat_abi)) == sorted(map(key, ours))


@pytest.fixture
def hardhat_node():
    port = free_port()
    proc = subprocess.Popen(
        [tools.hardhat_binary(), "node", "--hostname", "127.0.0.1", "--port", str(port)],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            Chain(url, timeout=1)
            break
        except ChainUnavailable:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("hardhat node did not start") from None
            time.sleep(0.3)
    yield url
    os.killpg(proc.pid, 9)
    proc.wait()


def test_hardhat_node_serves_as_the_chain(hardhat_node):
    chain = Chain(hardhat_node)
    deployment = deploy_contracts(
        chain, DevnetSettings(), ipfs_api="http://127.0.0.1:5001", ws_url=hardhat_node.replace("http", "ws")
    )
    chain = Chain.from_deployment(deployment, account=dev_account(4))
    nodes = chain.contract("NodeRegistry")
    chain.transact(nodes.functions.register("http://hh", (1024, 5, 50), b"\x02"), value=10**18)
    assert chain.call(nodes.functions.isActive(dev_account(4).address))
    assert chain.call(nodes.functions.market()) == deployment.address("JobMarket")
