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
    assert out.count("    stage ") == 9  # three jobs, three receipts each
    # job 2 is audited at every stage and found right; job 3, through the garbage node, is caught
    job2, job3 = out.split("\njob 2")[1].split("\njob 3")
    assert job2.count("    audit ") == 3 and "WRONG" not in job2
    assert "WRONG: node 4 slashed" in job3 and "node 4's stake: 1 ETH -> 0.9 ETH" in job3
    assert "output: '" in out  # the generation produced text
    verified = out.split("from its transcripts on IPFS")[1].splitlines()[1:4]
    assert len(verified) == 3 and all("honest" in line and "DISHONEST" not in line for line in verified), verified
    # job 4: an app's streamed chat through the OpenAI-compatible gateway equals the on-chain output
    assert "the on-chain output equals the stream" in out.split("\njob 4")[1]
