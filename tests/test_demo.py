"""`make demo` runs a real job end to end on its own devnet and leaves nothing running."""

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO, devnet_settings

pytestmark = pytest.mark.stack  # starts its own chain, IPFS daemon or node processes


def test_demo_job_completes_and_answers_sensibly(tmp_path):
    settings = devnet_settings(tmp_path / "net")
    env = {
        "SHARDNET_HOME": str(settings.home),
        "SHARDNET_CHAIN_PORT": str(settings.chain_port),
        "SHARDNET_IPFS_PORT": str(settings.ipfs_port),
    }
    result = subprocess.run(
        [sys.executable, "-m", "shardnet.demo"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=400,
        env={**os.environ, **env},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "network stopped" in out
    ranking = out.split("query: ")[1].splitlines()[1:5]
    assert "houseplants" in ranking[0]  # the person-judgeable answer: the plant-care sentence ranks first
    assert out.count("    stage ") == 6  # two jobs, three receipts each
    assert "output: '" in out  # the generation produced text
    verified = out.split("from its transcripts on IPFS")[1].splitlines()[1:4]
    assert len(verified) == 3 and all("honest" in line and "DISHONEST" not in line for line in verified), verified
