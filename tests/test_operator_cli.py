"""A node operator's whole job with its stake from the command line, on the real chain: see the
node's status, add stake, unstake part of it, exit, and get the stake back after the cooldown."""

from __future__ import annotations

import json

from shardnet.devnet import DevnetPaths
from tests.conftest import run_cli

ETHER = 10**18


def test_status_stake_unstake_and_exit(devnet, world, tmp_path):
    deployment = DevnetPaths.default(devnet["settings"]).deployment
    env = {"SHARDNET_DEPLOYMENT": str(deployment)}
    [node] = world.register_nodes(1)
    model = world.register_model(4, name="op-model")
    world.assign_even(model, [node], 4)
    config = tmp_path / "node.toml"
    config.write_text(f'dev_account = 2\ndeployment = "{deployment}"\n')
    assert node.address == world.node(0).address == "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"

    def status() -> dict:
        out = run_cli("node", "status", "--config", str(config), "--json", env=env)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    before = status()
    assert before["active"] and before["stake_wei"] == ETHER and before["jobs_failed"] == 0
    assert {"model_id": model, "blocks": [0, 4], "confirmed": True} in before["spans"]  # assign_even confirms
    human = run_cli("node", "status", "--config", str(config), env=env)
    assert "stake 1 ETH" in human.stdout and f"model {model}: blocks [0,4) confirmed" in human.stdout

    staked = json.loads(run_cli("node", "stake", "0.5eth", "--config", str(config), "--json", env=env).stdout)
    assert staked["stake"] == status()["stake_wei"] == ETHER + ETHER // 2
    bad = run_cli("node", "stake", "lots", "--config", str(config), env=env)
    assert bad.returncode != 0 and "not an amount" in bad.stderr
    assert run_cli("node", "unstake", "0.5eth", "--config", str(config), env=env).returncode == 0
    assert (status()["stake_wei"], status()["pending_unstake_wei"]) == (ETHER, ETHER // 2)

    first = run_cli("node", "exit", "--config", str(config), env=env)
    assert "run 'shardnet node exit' again" in first.stdout, first.stderr
    left = status()
    assert (left["stake_wei"], left["pending_unstake_wei"], left["active"]) == (0, ETHER + ETHER // 2, False)
    early = run_cli("node", "exit", "--config", str(config), env=env)
    assert "unlocks at" in early.stdout and status()["pending_unstake_wei"] == ETHER + ETHER // 2

    world.advance(world.contracts.nodes.cooldown_s() + 1)
    balance = world.chain.w3.eth.get_balance(node.address)
    done = run_cli("node", "exit", "--config", str(config), env=env)
    assert "this node has left the network" in done.stdout, done.stderr
    assert world.chain.w3.eth.get_balance(node.address) > balance + ETHER  # the stake came back (less gas)
    assert status()["pending_unstake_wei"] == 0
    gone = run_cli("node", "exit", "--config", str(config), env=env)
    assert "already left" in gone.stdout
    assert json.loads(run_cli("node", "exit", "--config", str(config), "--json", env=env).stdout)["stake"] == 0
