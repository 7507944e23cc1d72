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


def test_a_waiting_client_is_told_which_blocks_lack_a_live_node(devnet, world):
    """No coordinator routes here: the client sees why, from the chain and the nodes' agents."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from shardnet.client import Client, _ranges
    from shardnet.protocol import Hardware

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        live, silent = dev_account(9), world.node(0)
        world.register_nodes(1)  # its endpoint answers nothing
        nodes = world.contracts.nodes
        nodes.register(f"http://127.0.0.1:{server.server_port}", Hardware(4096, 10, 100), b"\x01", 10**18, account=live)
        model = world.register_model(6, name="why-model")
        models = world.contracts.models
        for node, (start, end) in ((live, (0, 2)), (silent, (2, 4))):
            models.assign_shard(model, node.address, start, end, account=world.coordinator)
            models.confirm_shard(model, account=node)
        job = world.post(model, CLIENT, 10**15)
        client = Client(world.chain, None)  # type: ignore[arg-type]  # reads the chain and probes only
        why = client.why_waiting(client.history(job))
        assert "blocks [2,6) of model" in why and "no live node with a confirmed span" in why
        assert _ranges([0, 1, 2, 5, 7, 8]) == "[0,3) [5,6) [7,9)"
    finally:
        server.shutdown()


def test_model_publish_registers_with_a_key_from_the_environment(devnet, world):
    """A model owner's job: cut a model into blocks on IPFS and register it, signing with a key
    from the environment (never on the command line)."""
    admin = dev_account(0)
    env = {
        "SHARDNET_DEPLOYMENT": str(DevnetPaths.default(devnet["settings"]).deployment),
        "SHARDNET_KEY": "0x" + bytes(admin.key).hex(),
    }
    out = run_cli("model", "publish", "tiny-gpt2", "--register", "--name", "env-key-model", env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    model_id = int(next(line.split()[-1] for line in out.stdout.splitlines() if line.startswith("model id")))
    model = world.contracts.models.model(model_id)
    assert (model.name, model.owner, model.block_count) == ("env-key-model", admin.address, 6)
    bad = run_cli("model", "publish", "tiny-gpt2", "--register", env={**env, "SHARDNET_KEY": "0x1234"})
    assert bad.returncode != 0 and "SHARDNET_KEY is not a private key" in bad.stderr


def test_submit_posts_the_job_while_the_daemon_stores_its_input(devnet, world, ipfs):
    """The input's CID is computed locally, so the job is posted while the daemon stores the bytes
    (in a thread); the CID on-chain is the one the daemon stored."""
    import threading

    from shardnet.client import Client
    from shardnet.jobs import JobParams

    nodes = world.register_nodes(1)
    model = world.register_model(2, price_per_block=10**9)
    world.assign_even(model, nodes, 2)
    client = Client.from_deployment(CLIENT, devnet["deployment"])
    threads, add = [], client.ipfs.add

    def recorded(data, name="blob", **kwargs):
        threads.append(threading.current_thread().name)
        return add(data, name, **kwargs)

    client.ipfs.add = recorded
    job = client.submit(model, {"input_ids": [7, 7, 7]}, JobParams(kind="forward"), 10**15)
    assert len(threads) == 1 and threads[0].startswith("input-add")
    record = client.history(job)
    assert json.loads(ipfs.cat(record.input_cid, timeout=10)) == {"input_ids": [7, 7, 7]}


def test_an_input_the_daemon_cannot_store_cancels_its_job_and_refunds_it(devnet, world):
    """The job is already posted when the daemon's failure is known: it is cancelled, the escrow
    is credited back, and the error names the job and what became of the escrow."""
    import pytest

    from shardnet.client import Client
    from shardnet.errors import StorageError, StorageUnavailable
    from shardnet.jobs import JobParams
    from shardnet.protocol import JobStatus

    nodes = world.register_nodes(1)
    model = world.register_model(2, price_per_block=10**9)
    world.assign_even(model, nodes, 2)
    client = Client.from_deployment(CLIENT, devnet["deployment"])
    before = world.contracts.market.balance(CLIENT.address)[0]

    def down(data, name="blob", **kwargs):
        raise StorageUnavailable("the IPFS RPC API is not reachable")

    client.ipfs.add = down
    with pytest.raises(StorageError, match=r"job (\d+): its input could not be put on IPFS .* cancelled") as err:
        client.submit(model, {"input_ids": [1]}, JobParams(kind="forward"), 10**15)
    job = int(err.value.args[0].split()[1].rstrip(":"))
    assert world.contracts.market.job(job).status == JobStatus.CANCELLED
    assert world.contracts.market.balance(CLIENT.address)[0] == before + 10**15
