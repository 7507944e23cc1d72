"""The auditor's index and CLI on the real stack, against a scripted history whose ground
truth the script knows (tests/history.py). A private devnet, so the views hold exactly the
scripted jobs."""

from __future__ import annotations

import http.server
import json
import os
import sqlite3
import subprocess
import threading
import time

import pytest
import requests

from shardnet import devnet as dn
from shardnet.chain import Chain, dev_account
from shardnet.deployment import Deployment
from shardnet.explorer import amount_text
from shardnet.indexer import Index, IndexerError
from shardnet.scenario import World
from tests.conftest import REPO, SHARDNET, devnet_settings, free_port, run_cli
from tests.history import MAX_FEE, History, script

pytestmark = pytest.mark.stack


@pytest.fixture(scope="module")
def scripted(tmp_path_factory):
    settings = devnet_settings(tmp_path_factory.mktemp("audit-devnet"))
    dn.up(settings)
    path = dn.DevnetPaths.default(settings).deployment
    chain = Chain.from_deployment(Deployment.load(path), account=dev_account(0))
    try:
        yield chain, script(World.of(chain)), {"SHARDNET_DEPLOYMENT": str(path)}
    finally:
        dn.down(settings)


def cli_json(env, *args):
    out = run_cli("audit", *args, "--json", env=env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_every_cli_view_matches_the_script(scripted):
    chain, h, env = scripted
    h: History
    jobs = cli_json(env, "jobs")
    assert {r["job"]: r["status"] for r in jobs} == h.status
    assert [r["job"] for r in cli_json(env, "jobs", "--status", "expired")] == [
        j for j, s in h.status.items() if s == "expired"
    ]
    assert {r["job"] for r in cli_json(env, "jobs", "--client", h.clients[1].lower())} == {
        r["job"] for r in jobs if r["client"] == h.clients[1]
    }
    assert {r["job"] for r in cli_json(env, "jobs", "--node", h.nodes[3])} == h.rerouted

    for job_id, status in h.status.items():
        job = cli_json(env, "job", str(job_id))
        assert job["status"] == status
        assert job["payouts"] == h.payouts.get(job_id, {})
        assert job["refunded"] == h.refunds[job_id] and job["paid"] + job["refunded"] == MAX_FEE
        assert job["failed_nodes"] == h.failed.get(job_id, [])
        assert [s["node"] for s in job["stages"]] == [s.node for s in h.routes.get(job_id, [])]
        events = [e["event"] for e in job["timeline"]]
        assert events[0] == "JobPosted" and ("JobRerouted" in events) == (job_id in h.rerouted)
        if status == "completed":
            assert all(s["output_hash"] for s in job["stages"]) and job["output_cid"] == f"QmOut{job_id}"
            assert job["stages"][1]["input_hash"] == job["stages"][0]["output_hash"]
        if status == "aborted":
            assert job["abort_reason"] == h.aborted_reason
    table = run_cli("audit", "job", str(next(iter(h.rerouted))), env=env)
    assert "JobRerouted" in table.stdout and "stage 1" in table.stdout

    slashed_node = next(iter(h.slashed))
    node = cli_json(env, "node", slashed_node)
    assert node["slashed"] == h.slashed[slashed_node] and node["stake"] == 10**18 - h.slashed[slashed_node]
    assert [s["event"] for s in node["slashes"]] == ["NodeSlashed"]
    assert node["failures"] == [j for j, nodes in h.failed.items() if slashed_node in nodes]
    paid_node = h.nodes[0]
    node = cli_json(env, "node", paid_node)
    assert node["earned"] == sum(p.get(paid_node, 0) for p in h.payouts.values())
    assert node["withdrawn"] == h.withdrawn[paid_node] and node["credit"] == 0
    assert node["spans"] == {str(h.model): {"start": 0, "end": 4, "confirmed": True}}
    unstaking = cli_json(env, "node", h.nodes[3])
    assert unstaking["pending_unstake"] == 10**18 and unstaking["stake"] == 0
    assert [e["event"] for e in unstaking["stake_history"]] == ["NodeRegistered", "UnstakeRequested"]

    model = cli_json(env, "model", str(h.model))
    assert model["coverage"] == [1] * 12  # node 3's replica of blocks 4-8 left with its stake
    assert {a["node"]: a["staked"] for a in model["assignments"]} == {n: n != h.nodes[3] for n in h.nodes}
    assert model["jobs"] == {s: list(h.status.values()).count(s) for s in set(h.status.values())}
    assert model["fees_paid"] == sum(sum(p.values()) for p in h.payouts.values())
    network = cli_json(env, "network")
    assert network["jobs"] == len(h.status) and {n["node"] for n in network["node_list"]} == set(h.nodes)


def test_fast_decoder_equals_web3s_event_decoding(scripted):
    """The indexer's eth_abi decoder gives what web3's generic decoder gives, for every event."""
    from web3._utils.events import get_event_data

    from shardnet.events import EventDecoder

    chain, h, env = scripted
    from eth_utils import event_abi_to_log_topic

    abis = {event_abi_to_log_topic(e): e for e in chain.abis if e.get("type") == "event"}  # names repeat
    logs = chain.w3.eth.get_logs({"address": chain.deployment.addresses(), "fromBlock": chain.deployment.deploy_block})
    raw = chain.w3.provider.make_request(
        "eth_getLogs",
        [
            {
                "address": chain.deployment.addresses(),
                "fromBlock": hex(chain.deployment.deploy_block),
            }
        ],
    )["result"]
    decoder = EventDecoder(chain.abis)
    names = set()
    for log, raw_log in zip(logs, raw, strict=True):
        fast, from_raw = decoder.decode(log), decoder.decode(raw_log)
        assert fast == from_raw
        reference = get_event_data(chain.w3.codec, abis[bytes(log["topics"][0])], log)
        assert json.dumps(fast.args, default=_plain) == json.dumps(dict(reference["args"]), default=_plain), fast.name
        assert (fast.block_number, fast.log_index) == (reference["blockNumber"], reference["logIndex"])
        names.add(fast.name)
    assert {"JobRouted", "ResultSubmitted", "NodeRegistered", "NodeSlashed", "JobRerouted"} <= names


def _plain(value):
    return dict(value) if hasattr(value, "keys") else bytes(value).hex() if isinstance(value, bytes) else str(value)


def test_reconcile_passes_and_names_an_altered_row(scripted, tmp_path):
    chain, h, env = scripted
    ok = run_cli("audit", "reconcile", env=env)
    assert ok.returncode == 0 and ok.stdout.startswith(f"ok: {len(h.status)} jobs"), ok.stdout + ok.stderr
    assert run_cli("audit", "verify-receipts", env=env).returncode == 0
    with Index(tmp_path / "copy.sqlite", chain) as index:  # the fixture: a copy with one row altered
        index.sync()
    job_id = next(j for j, s in h.status.items() if s == "completed")
    with sqlite3.connect(tmp_path / "copy.sqlite") as db:
        db.execute("UPDATE jobs SET escrow = '5' WHERE job_id = ?", (job_id,))
        db.execute("UPDATE accounts SET credit = '1' WHERE address = ?", (h.nodes[1],))
    bad = run_cli("audit", "reconcile", "--db", str(tmp_path / "copy.sqlite"), env=env)
    assert bad.returncode == 2
    assert f"index row jobs[job_id={job_id}]: escrow is 5" in bad.stdout
    assert f"index row accounts[address={h.nodes[1]}]: credit is 1" in bad.stdout


class _DyingProxy(http.server.ThreadingHTTPServer):
    """Forwards JSON-RPC to the chain, then stops answering after `budget` requests."""

    def __init__(self, upstream: str, budget: int):
        self.upstream, self.budget, self.served = upstream, budget, 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                proxy.served += 1
                if proxy.served > proxy.budget:
                    self.close_connection = True  # hang up without a reply
                    return
                reply = requests.post(proxy.upstream, data=body, headers={"Content-Type": "application/json"})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.content)))
                self.end_headers()
                self.wfile.write(reply.content)

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def test_rpc_that_stops_mid_sync_resumes_without_gaps_or_duplicates(scripted, tmp_path):
    chain, h, env = scripted
    proxy = _DyingProxy(chain.rpc_url, budget=12)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        dying = Chain.from_deployment(chain.deployment, rpc_url=proxy.url)
        with Index(tmp_path / "resumed.sqlite", dying) as index:
            with pytest.raises(
                IndexerError, match="stopped answering while indexing blocks .* run the same command again to resume"
            ) as err:
                index.sync(batch_blocks=3)
            stopped_at = index.next_block
        assert chain.deployment.deploy_block < stopped_at < chain.w3.eth.block_number, err.value
    finally:
        proxy.shutdown()
    resumed = run_cli("audit", "sync", "--db", str(tmp_path / "resumed.sqlite"), env=env)
    assert resumed.returncode == 0, resumed.stderr
    with Index(tmp_path / "fresh.sqlite", chain) as fresh:
        fresh.sync()
    rows = {}
    for name in ("resumed", "fresh"):
        with sqlite3.connect(tmp_path / f"{name}.sqlite") as db:
            rows[name] = {
                t: db.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("events", "job_stages", "payouts", "accounts", "nodes", "assignments")
            }
            rows[name]["jobs"] = db.execute("SELECT * FROM jobs ORDER BY job_id").fetchall()
    assert rows["resumed"] == rows["fresh"]
    assert len(rows["fresh"]["events"]) == len(set(r[:2] for r in rows["fresh"]["events"]))
    assert len(rows["fresh"]["jobs"]) == len(h.status)


def test_bad_input_gets_a_clear_message(scripted, tmp_path):
    chain, h, env = scripted
    unknown = run_cli("audit", "job", "999", env=env)
    assert (
        unknown.returncode == 1
        and f"job 999 does not exist on this deployment (jobs are numbered 1 to {len(h.status)})" in unknown.stderr
    )
    for args in (("node", "0xnot-an-address"), ("jobs", "--client", "alice")):
        bad = run_cli("audit", *args, env=env)
        assert bad.returncode == 2 and "0x followed by 40 hex digits" in bad.stderr and "Traceback" not in bad.stderr
    stranger = run_cli("audit", "node", dev_account(19).address, env=env)
    assert stranger.returncode == 1 and "never registered as a node" in stranger.stderr
    assert "does not exist" in run_cli("audit", "model", "42", env=env).stderr
    down = run_cli("audit", "jobs", "--rpc-url", "http://127.0.0.1:9", "--db", str(tmp_path / "x.sqlite"), env=env)
    assert down.returncode == 1 and "Traceback" not in down.stderr and "127.0.0.1:9" in down.stderr


CHROMIUM = "/usr/bin/chromium"  # Debian's chromium, installed by scripts/bootstrap.sh
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUTPUT = REPO / "build" / "test-output"


@pytest.fixture
def explorer(scripted, tmp_path):
    chain, h, env = scripted
    port = free_port()
    proc = subprocess.Popen(
        [*SHARDNET, "explorer", "--port", str(port), "--db", str(tmp_path / "explorer.sqlite"), "--interval", "0.3"],
        env={**os.environ, **env},
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/api/summary", timeout=1).json()["jobs"] == len(h.status):
                    break
            except (requests.RequestException, ValueError):
                pass
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "the explorer did not index the history within 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_explorer_in_headless_chromium(scripted, explorer):
    from playwright.sync_api import expect, sync_playwright

    chain, h, env = scripted
    job_id = next(iter(h.rerouted))
    OUTPUT.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(explorer)
        expect(page.get_by_test_id("job-count")).to_have_text(str(len(h.status)))
        expect(page.get_by_test_id("chart")).to_be_visible()
        # registered is not alive: no agent runs behind these nodes' endpoints
        some_node = next(iter(h.routes[next(iter(h.rerouted))])).node
        page.reload()
        expect(page.get_by_test_id(f"alive-{some_node}")).to_contain_text("never seen", timeout=10_000)
        expect(page.get_by_test_id("models")).to_contain_text("audit-model")
        page.get_by_role("link", name="jobs", exact=True).click()  # the list, then the job
        expect(page).to_have_url(f"{explorer}/jobs")
        page.get_by_test_id(f"job-link-{job_id}").click()
        expect(page).to_have_url(f"{explorer}/jobs/{job_id}")
        expect(page.get_by_test_id("job-status")).to_have_text("completed")
        for k, stage in enumerate(h.routes[job_id]):
            row = page.get_by_test_id(f"stage-{k}")
            expect(row).to_contain_text(stage.node)
            paid = h.payouts[job_id][stage.node]
            expect(page.get_by_test_id(f"stage-paid-{k}")).to_have_text(amount_text(paid))
        # amounts in ETH or gwei, each with its exact wei on hover
        paid = page.get_by_test_id("paid").locator("span")
        expect(paid).to_have_text(amount_text(sum(h.payouts[job_id].values())))
        expect(paid).to_have_attribute("title", f"{sum(h.payouts[job_id].values())} wei")
        expect(page.get_by_test_id("refunded")).to_have_text(amount_text(h.refunds[job_id]))
        expect(page.get_by_test_id("timeline")).to_contain_text("JobRerouted")
        page.screenshot(path=OUTPUT / "explorer-job.png", full_page=True)

        page.goto(explorer)  # live: a job posted now shows up without a reload
        world = World.of(chain)
        new_job = world.post(h.model, dev_account(12), MAX_FEE)
        h.status[new_job], h.refunds[new_job] = "posted", 0
        expect(page.get_by_test_id("job-count")).to_have_text(str(len(h.status)), timeout=10_000)
        expect(page.get_by_test_id(f"job-link-{new_job}")).to_be_visible()
        page.screenshot(path=OUTPUT / "explorer-network.png", full_page=True)

        page.goto(f"{explorer}/jobs/999")
        expect(page.get_by_test_id("error")).to_contain_text("job 999 does not exist")
        page.goto(f"{explorer}/nodes/0x1234")
        expect(page.get_by_test_id("error")).to_contain_text("0x followed by 40 hex digits")
        browser.close()
    assert (OUTPUT / "explorer-job.png").stat().st_size > 10_000
