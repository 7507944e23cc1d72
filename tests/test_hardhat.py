"""Hardhat users: the same sources compile offline, and a Hardhat node can be the chain. And
`shardnet deploy` puts the contracts on any JSON-RPC chain (a Hardhat node, an Anvil started
apart from the devnet) or attaches to them, writing the deployment file every tool works from."""

import json
import os
import subprocess
import time

import pytest

from shardnet import compiler, tools
from shardnet.chain import Chain, dev_account
from shardnet.deployment import Deployment
from shardnet.devnet import DevnetSettings, deploy_contracts
from shardnet.errors import ChainUnavailable
from tests.conftest import REPO, free_port, run_cli

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


def _wait_for_chain(url: str, proc: subprocess.Popen, timeout_s: float, what: str) -> None:
    """Until the chain at `url` answers; kills `proc` and fails if it exits or takes too long."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            Chain(url, timeout=1)
            return
        except ChainUnavailable:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{what} did not start") from None
            time.sleep(0.2)


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
    _wait_for_chain(url, proc, 60, "hardhat node")
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


def _deploy_and_attach(rpc_url: str, tmp_path, chain_id: int) -> None:
    out = tmp_path / "deployment.json"
    env = {"SHARDNET_KEY": "0x" + bytes(dev_account(0).key).hex()}  # funded on both chains
    coordinator = dev_account(1).address
    args = ["deploy", "--rpc-url", rpc_url, "--ipfs-api", "http://127.0.0.1:5001", "--coordinator", coordinator]
    first = run_cli(*args, "--out", str(out), env=env, timeout=300)
    assert first.returncode == 0 and f"deployed contracts on chain {chain_id}" in first.stdout, first.stderr
    deployment = Deployment.load(out)
    again = run_cli(*args, "--out", str(out), env=env, timeout=300)
    assert "attached to the existing contracts" in again.stdout, again.stderr
    assert Deployment.load(out).contracts == deployment.contracts  # nothing redeployed
    chain = Chain.from_deployment(deployment)
    market = chain.contract("JobMarket")
    assert chain.call(market.functions.hasRole(chain.call(market.functions.COORDINATOR_ROLE()), coordinator))
    listed = run_cli("model", "list", "--json", env={"SHARDNET_DEPLOYMENT": str(out)})
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    bad = run_cli(*args[:-1], "not-an-address", "--out", str(tmp_path / "x.json"), env=env)
    assert bad.returncode != 0 and "not an address" in bad.stderr


def test_deploy_command_on_a_hardhat_node(hardhat_node, tmp_path):
    _deploy_and_attach(hardhat_node, tmp_path, 31337)


def test_deploy_command_on_an_anvil_apart_from_the_devnet(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [tools.anvil_binary(), "--host", "127.0.0.1", "--port", str(port), "--chain-id", "4242"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_chain(url, proc, 30, "anvil")
        _deploy_and_attach(url, tmp_path, 4242)
    finally:
        os.killpg(proc.pid, 9)
        proc.wait()
