"""`shardnet devnet up | status | down` on a devnet of its own (the session devnet is left alone)."""

import json
import os
import signal
import socket
import time

import pytest

from shardnet import devnet as dn
from shardnet.chain import Chain, dev_account
from shardnet.errors import PortInUse
from shardnet.protocol import CONTRACTS
from tests.conftest import devnet_settings, run_cli

pytestmark = pytest.mark.stack  # starts its own chain, IPFS daemon or node processes


def _env(settings):
    return {
        "SHARDNET_HOME": str(settings.home),
        "SHARDNET_CHAIN_PORT": str(settings.chain_port),
        "SHARDNET_IPFS_PORT": str(settings.ipfs_port),
    }


def _pids(settings):
    return json.loads(dn.DevnetPaths.default(settings).pids.read_text())


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return open(f"/proc/{pid}/stat").read().split()[2] != "Z"


def test_up_status_down_and_survive_sigkill(tmp_path):
    settings = devnet_settings(tmp_path / "net")
    env = _env(settings)

    started = time.monotonic()
    up = run_cli("devnet", "up", "--json", env=env)
    took = time.monotonic() - started
    assert up.returncode == 0, up.stderr
    print(f"devnet up took {took:.1f} s")
    assert took < 15

    status = run_cli("devnet", "status", "--json", env=env)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["chain_id"] == 31337
    assert info["block_number"] >= 6  # three deployments + wiring
    assert info["ipfs_peer_id"].startswith("12D3")
    assert set(info["contracts"]) == set(CONTRACTS)

    # write some state, then kill Anvil without letting it save on exit
    chain = Chain(info["rpc_url"], account=dev_account(5))
    nodes = chain.contract("NodeRegistry", info["contracts"]["NodeRegistry"])
    chain.transact(nodes.functions.register("http://127.0.0.1:7001", (1024, 10, 100), b"\x01"), value=10**18)
    time.sleep(2.5)  # --state-interval 1
    anvil_pid = _pids(settings)["anvil"]["pid"]
    os.kill(anvil_pid, signal.SIGKILL)
    while _running(anvil_pid):
        time.sleep(0.05)

    again = run_cli("devnet", "up", "--json", env=env)
    assert again.returncode == 0, again.stderr
    info2 = json.loads(again.stdout)
    assert info2["started"] == ["anvil"] and info2["deployed"] is False
    assert info2["contracts"] == info["contracts"]
    chain = Chain(info2["rpc_url"])
    nodes = chain.contract("NodeRegistry", info2["contracts"]["NodeRegistry"])
    assert nodes.functions.isActive(dev_account(5).address).call()

    pids = [rec["pid"] for rec in _pids(settings).values()]
    down = run_cli("devnet", "down", env=env)
    assert down.returncode == 0, down.stderr
    assert all(not _running(pid) for pid in pids)
    assert not dn.DevnetPaths.default(settings).pids.exists()


def test_free_port_never_hands_out_one_port_twice(monkeypatch):
    """The OS may offer a port again until the process it was handed to binds it: free_port
    skips a port it gave before (two devnet nodes once got one port, and one could not start)."""
    from shardnet.tools import free_port

    offered = iter([1, 1, 2])  # below 1024: never one a real call handed out

    class Offering:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def bind(self, address):
            pass

        def getsockname(self):
            return ("127.0.0.1", next(offered))

    monkeypatch.setattr(socket, "socket", lambda *args, **kwargs: Offering())
    assert [free_port(), free_port()] == [1, 2]


def test_port_in_use_is_refused(tmp_path):
    settings = devnet_settings(tmp_path / "net")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", settings.chain_port))
        squatter.listen()
        with pytest.raises(PortInUse, match="--chain-port"):
            dn.up(settings)
        result = run_cli("devnet", "up", env=_env(settings))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0 and "already in use" in result.stderr
    assert "Traceback" not in result.stderr
    assert not dn.DevnetPaths.default(settings).pids.exists() or not any(
        _running(r["pid"]) for r in _pids(settings).values()
    )
