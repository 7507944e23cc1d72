"""Operator mistakes give one line that names the fix, never a traceback."""

import json

from tests.conftest import free_port, run_cli


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


def test_unreachable_rpc(tmp_path, deployment):
    data = json.loads(json.dumps(deployment.__dict__, default=lambda o: o.__dict__))
    data["rpc_url"] = f"http://127.0.0.1:{free_port()}"
    home = tmp_path / "home"
    home.mkdir()
    (home / "deployment.json").write_text(json.dumps(data))
    result = run_cli("devnet", "status", env={"SHARDNET_HOME": str(home)})
    _one_line_error(result, "cannot reach the JSON-RPC endpoint", "--rpc-url")


def test_stopped_ipfs(tmp_path, deployment):
    data = json.loads(json.dumps(deployment.__dict__, default=lambda o: o.__dict__))
    data["ipfs_api"] = f"http://127.0.0.1:{free_port()}"
    home = tmp_path / "home"
    home.mkdir()
    (home / "deployment.json").write_text(json.dumps(data))
    result = run_cli("devnet", "status", env={"SHARDNET_HOME": str(home)})
    _one_line_error(result, "IPFS RPC API", "is not reachable")
