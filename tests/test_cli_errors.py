"""Operator mistakes give one line that names the fix, never a traceback."""

import json

import pytest

from tests.conftest import free_port, run_cli

pytestmark = pytest.mark.stack  # starts its own chain, IPFS daemon or node processes


def _one_line_error(result, *needles):
    assert result.returncode == 1
    text = result.stderr.strip()
    assert "Traceback" not in text
    assert len(text.splitlines()) == 1, text
    for needle in needles:
        assert needle in text, text


def test_missing_deployment_file(tmp_path):
    result = run_cli("devnet", "status", env={"SHARDNET_HOME": str(tmp_path / "nowhere")})
    _one_line_error(result, "no deployment file", "shardnet devnet up")


def _status_with(tmp_path, deployment, **override):
    """`devnet status` against a copy of the deployment file with some fields changed."""
    data = json.loads(json.dumps(deployment.__dict__, default=lambda o: o.__dict__))
    data.update(override)
    home = tmp_path / "home"
    home.mkdir()
    (home / "deployment.json").write_text(json.dumps(data))
    return run_cli("devnet", "status", env={"SHARDNET_HOME": str(home)})


def test_unreachable_rpc(tmp_path, deployment):
    result = _status_with(tmp_path, deployment, rpc_url=f"http://127.0.0.1:{free_port()}")
    _one_line_error(result, "cannot reach the JSON-RPC endpoint", "--rpc-url")


def test_stopped_ipfs(tmp_path, deployment):
    result = _status_with(tmp_path, deployment, ipfs_api=f"http://127.0.0.1:{free_port()}")
    _one_line_error(result, "IPFS RPC API", "is not reachable")
