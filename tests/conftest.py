"""Shared fixtures. `devnet` is a real Anvil + IPFS daemon + deployed contracts, started once per
test session in a temporary folder on free ports (a developer's own devnet is left alone)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from shardnet import devnet as dn
from shardnet.chain import Chain, dev_account
from shardnet.deployment import Deployment
from shardnet.storage import IpfsClient
from shardnet.tools import free_port

REPO = Path(__file__).resolve().parents[1]
SHARDNET = [sys.executable, "-m", "shardnet.cli"]


def devnet_settings(home: Path) -> dn.DevnetSettings:
    return dn.DevnetSettings(home=home, chain_port=free_port(), ipfs_port=free_port())


def run_cli(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*SHARDNET, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}, cwd=REPO
    )


@pytest.fixture(scope="session")
def devnet(tmp_path_factory):
    settings = devnet_settings(tmp_path_factory.mktemp("devnet"))
    info = dn.up(settings)
    yield {
        "settings": settings,
        "info": info,
        "deployment": Deployment.load(dn.DevnetPaths.default(settings).deployment),
    }
    dn.down(settings)


@pytest.fixture(scope="session")
def deployment(devnet) -> Deployment:
    return devnet["deployment"]


@pytest.fixture(scope="session")
def chain(deployment) -> Chain:
    return Chain.from_deployment(deployment, account=dev_account(0))


@pytest.fixture(scope="session")
def ipfs(deployment):
    with IpfsClient(deployment.ipfs_api) as client:
        yield client


@pytest.fixture
def fresh_chain(chain):
    """The session chain, rolled back after the test (evm_snapshot / evm_revert)."""
    snapshot = chain.w3.provider.make_request("evm_snapshot", [])["result"]
    yield chain
    chain.w3.provider.make_request("evm_revert", [snapshot])


@pytest.fixture
def world(fresh_chain):
    from shardnet.scenario import World

    return World.of(fresh_chain)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses the session devnet is a `stack` test (`make test-fast` leaves them out)."""
    for item in items:
        if "devnet" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.stack)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed test on a local network reports the warnings and errors its processes logged, so
    a failure on a machine whose network is gone (CI) can still be read."""
    report = yield
    args = getattr(item, "funcargs", {})
    home = getattr(args.get("net"), "home", None) or args.get("tmp_path")  # a module's network, or the test's
    if report.failed and call.when == "call" and home is not None:
        lines = []
        for path in sorted(Path(home).rglob("*.log")):
            logged = path.read_text(errors="replace").splitlines()
            lines += [f"{path.stem}: {line[:400]}" for line in logged if '"warning"' in line or '"error"' in line]
        report.sections.append(("network warnings and errors (last 60)", "\n".join(lines[-60:])))
    return report
