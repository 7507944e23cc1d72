"""A client's and a model owner's whole job from the command line, on the real chain: list the
models, cancel a job nobody routed, withdraw the refund."""

from __future__ import annotations

import json

from shardnet.chain import dev_account
from shardnet.devnet import DevnetPaths
from tests.conftest import run_cli

CLIENT = dev_account(12)


def test_model_list_cancel_and_withdraw(devnet, world):
    env = {"SHARDNET_DEPLOYMENT": str(DevnetPaths.default(devnet["settings"]).deployment)}
    nodes = world.register_nodes(2)
    model = world.register_model(4, price_per_block=10**9, name="cli-model")
    world.assign_even(model, nodes, 4)
    listed = json.loads(run_cli("model", "list", "--json", env=env).stdout)
    row = next(r for r in listed if r["model_id"] == model)
    assert (row["name"], row["blocks"], row["price_per_block_wei"], row["min_replicas"]) == ("cli-model", 4, 10**9, 1)

    job = world.post(model, CLIENT, 10**15)  # no coordinator on this chain: it stays posted
    other = world.post(model, dev_account(13), 10**15)
    mine = json.loads(run_cli("job", "list", "--json", env=env).stdout)
    assert [(r["job_id"], r["status"]) for r in mine] == [(job, "posted")]  # only the caller's own
    theirs = json.loads(run_cli("job", "list", "--json", "--dev-account", "13", env=env).stdout)
    assert [r["job_id"] for r in theirs] == [other]
    cancelled = run_cli("job", "cancel", str(job), env=env)
    assert cancelled.returncode == 0 and f"job {job} cancelled" in cancelled.stdout, cancelled.stderr
    again = run_cli("job", "cancel", str(job), env=env)
    assert again.returncode != 0 and "WrongStatus" in again.stderr
    listed = run_cli("job", "list", env=env).stdout
    assert f"{job}  cancelled" in listed and "refunded 1000000000000000" in listed
    paid = json.loads(run_cli("job", "withdraw", "--json", env=env).stdout)
    assert paid["withdrawn_wei"]["market"] >= 10**15
    assert world.contracts.market.balance(CLIENT.address)[0] == 0
    nothing = run_cli("job", "withdraw", env=env)
    assert nothing.returncode == 0 and "nothing to withdraw" in nothing.stdout
