"""The network end to end on the real stack: a devnet, a coordinator process and three node
processes serve generation, embedding and forward jobs posted on-chain; outputs equal the
model run locally, every stage is paid exactly per its route, bad jobs are refunded with a
reason, a node restarted mid-run never submits twice, and a coordinator killed under load
resumes."""

import json
import threading
import time
from typing import Any

import pytest
import torch

from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.events import EventReader
from shardnet.jobs import JobParams
from shardnet.localnet import Network
from shardnet.model.architectures import num_blocks
from shardnet.model.loading import load_tokenizer, minilm_dir
from shardnet.model.manifest import fetch_manifest
from shardnet.model.quant import decode_activation, encode_activation
from shardnet.model.shards import fetch_span
from shardnet.model.span import SpanModel
from shardnet.protocol import SETTLED, JobStatus, Span
from tests.conftest import run_cli
from tests.helpers import Relay, node_metric

pytestmark = pytest.mark.stack  # starts its own chain, IPFS daemon or node processes

MAX_FEE = 10**15
JOBS_PER_KIND = 10


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    network = Network(tmp_path_factory.mktemp("network")).start()
    models = {}
    for source in ("tiny-gpt2", "minilm", "tiny-llama"):
        models[source] = network.publish(source)
    for model_id, _ in models.values():
        network.wait_confirmed(model_id, 3)
    network.models = models
    network.client = Client.from_deployment(dev_account(12), network.deployment)
    yield network
    nodes = [name for name in network.procs if name.startswith("node")]
    clean = network.stop()
    assert all(clean.values()), f"processes that ignored SIGTERM: {[n for n, ok in clean.items() if not ok]}"
    for name in nodes:  # each one's shutdown ran to its end (drained, state saved), not cut half-way
        last = (network.home / f"{name}.log").read_text().splitlines()[-1]
        assert json.loads(last)["msg"] == "node stopped", (name, last)


def _local(net, source):
    """The published model rebuilt locally from the same shards: whole, and as the route's spans."""
    manifest = fetch_manifest(net.ipfs, net.models[source][1])
    blocks = fetch_span(net.ipfs, manifest, Span(0, len(manifest.blocks)))
    return manifest.new_config(), blocks


def _route_spans(record):
    return [Span(start, end) for _, start, end, _ in record.route]


def _pipeline(config, blocks, spans, x, wire, mask=None, sessions=None):
    models = [SpanModel(config, s, blocks) for s in spans]
    sessions = sessions or [None] * len(models)
    for k, (model, session) in enumerate(zip(models, sessions, strict=True)):
        x = model(x, attention_mask=mask, session=session)
        if k < len(models) - 1:
            x = decode_activation(encode_activation(x, wire))
    return x


def _greedy(config, blocks, spans, prompt, n, wire):
    models = [SpanModel(config, s, blocks) for s in spans]
    sessions = [m.new_session() for m in models]
    tokens, step = [], torch.tensor([prompt])
    for _ in range(n):
        x = step
        for k, (model, session) in enumerate(zip(models, sessions, strict=True)):
            x = model(x, session=session)
            if k < len(models) - 1:
                x = decode_activation(encode_activation(x, wire))
        tokens.append(int(x[0, -1].argmax()))
        step = torch.tensor([[tokens[-1]]])
    return tokens


def _submit_all(net, model_id, inputs, params):
    return [net.client.submit(model_id, job_input, p, MAX_FEE) for job_input, p in zip(inputs, params, strict=True)]


def _wait_all(net, job_ids):
    return [net.client.wait(j, timeout_s=180) for j in job_ids]


def _assert_paid_per_route(net, result):
    r = result.record
    fees = {}
    for node, _, _, fee in r.route:
        fees[node] = fees.get(node, 0) + fee
    cut = sum(fees.values()) * net.c.market.coordinator_fee_bps() // 10_000
    expected = dict(fees)
    if cut:
        expected[r.coordinator] = expected.get(r.coordinator, 0) + cut
    assert r.payouts == expected
    assert r.refunded + r.verification == r.max_fee - sum(expected.values())  # an audit's pay from the change


def test_generation_jobs_equal_local_model(net):
    model_id, _ = net.models["tiny-gpt2"]
    prompts = [[(7 * i + j) % 500 + 1 for j in range(3 + i % 4)] for i in range(JOBS_PER_KIND)]
    wires = ["fp32" if i % 2 else "int8" for i in range(JOBS_PER_KIND)]
    params = [JobParams(kind="generate", max_new_tokens=12, wire=w) for w in wires]
    results = _wait_all(net, _submit_all(net, model_id, [{"input_ids": p} for p in prompts], params))
    config, blocks = _local(net, "tiny-gpt2")
    whole = [Span(0, num_blocks(config))]
    for prompt, wire, result in zip(prompts, wires, results, strict=True):
        assert result.status == JobStatus.COMPLETED, result.record.abort_reason
        got = result.output["tokens"]
        if wire == "fp32":  # exact activations: identical to the whole model in one process
            assert got == _greedy(config, blocks, whole, prompt, 12, "fp32")
        else:  # int8 activations: identical to the same 3-span pipeline run locally
            assert got == _greedy(config, blocks, _route_spans(result.record), prompt, 12, "int8")
        assert len(result.record.route) == 3
        _assert_hops_timed(result.output["timing"], 3 * len(got) - 1)  # the prompt 0->1->2, each token round
        _assert_paid_per_route(net, result)


def _assert_hops_timed(timing: dict[str, Any], hops: int) -> None:
    """The job's timing counted each hop between stages once, and their time is part of the data
    plane's."""
    assert timing["hops"] == hops
    assert 0 < timing["hop_ms"] < timing["data_plane_ms"]


def test_embedding_jobs_match_whole_model(net):
    model_id, _ = net.models["minilm"]
    from pydoc_data.topics import topics

    sentences = [s.strip() for text in list(topics.values())[:40] for s in text.split(". ") if 30 < len(s) < 150]
    batches = [sentences[3 * i : 3 * i + 3] for i in range(JOBS_PER_KIND)]
    results = _wait_all(
        net, _submit_all(net, model_id, [{"texts": b} for b in batches], [JobParams(kind="embed")] * JOBS_PER_KIND)
    )
    config, blocks = _local(net, "minilm")
    whole = SpanModel(config, Span(0, num_blocks(config)), blocks)
    tokenizer = load_tokenizer(minilm_dir())
    for batch, result in zip(batches, results, strict=True):
        assert result.status == JobStatus.COMPLETED, result.record.abort_reason
        enc = tokenizer(batch, padding=True, truncation=True, max_length=256, return_tensors="pt")
        ref = whole(enc["input_ids"], attention_mask=enc["attention_mask"])
        got = torch.tensor(result.output["embeddings"])
        assert torch.nn.functional.cosine_similarity(got, ref).min().item() >= 0.999
        _assert_paid_per_route(net, result)


def test_forward_jobs_equal_local_model(net):
    model_id, _ = net.models["tiny-llama"]
    inputs = [[(11 * i + j) % 500 for j in range(4 + i)] for i in range(JOBS_PER_KIND)]
    results = _wait_all(
        net,
        _submit_all(
            net,
            model_id,
            [{"input_ids": ids} for ids in inputs],
            [JobParams(kind="forward", wire="fp32")] * JOBS_PER_KIND,
        ),
    )
    config, blocks = _local(net, "tiny-llama")
    whole = SpanModel(config, Span(0, num_blocks(config)), blocks)
    for ids, result in zip(inputs, results, strict=True):
        assert result.status == JobStatus.COMPLETED, result.record.abort_reason
        ref = whole(torch.tensor([ids]))
        got = torch.tensor(result.output["output"])  # the last position's logits
        assert (got - ref[:, -1]).abs().max().item() <= 1e-4
        assert result.output["argmax"] == ref.argmax(-1).tolist()
        _assert_hops_timed(result.output["timing"], len(result.record.route) - 1)
        _assert_paid_per_route(net, result)


def test_bad_jobs_are_refunded_with_a_reason_and_nodes_keep_serving(net):
    from shardnet import contract_errors
    from shardnet.cid import cid_v0

    model_id, _ = net.models["tiny-gpt2"]
    market, client = net.c.market, dev_account(12)
    with pytest.raises(contract_errors.UnknownModel):
        net.client.submit(999, {"input_ids": [1]}, JobParams(), MAX_FEE)

    deadline = net.chain.w3.eth.get_block("latest")["timestamp"] + 600
    malformed = net.ipfs.add(b"this is not json")
    missing = cid_v0(b"never stored anywhere " + str(time.time()).encode())
    good_input = net.ipfs.add(json.dumps({"input_ids": [1, 2, 3]}).encode())
    jobs = {
        "not JSON": market.post_job(model_id, malformed, JobParams().encode(), MAX_FEE, deadline, account=client),
        "could not be read from IPFS": market.post_job(
            model_id, missing, JobParams().encode(), MAX_FEE, deadline, account=client
        ),
        "params.max_new_tokens": market.post_job(
            model_id, good_input, b'{"kind":"generate","max_new_tokens":0}', MAX_FEE, deadline, account=client
        ),
        "unknown field": market.post_job(model_id, good_input, b'{"colour":"blue"}', MAX_FEE, deadline, account=client),
        "cannot generate": market.post_job(
            net.models["minilm"][0], good_input, JobParams().encode(), MAX_FEE, deadline, account=client
        ),
    }
    for reason, job_id in jobs.items():
        result = net.client.wait(job_id, timeout_s=60)
        assert result.aborted, (reason, result.status)  # by the coordinator, or by stage 0 once routed
        assert reason in result.record.abort_reason
    # no stage delivered anything, so once the claim window after an abort by stage 0 is over,
    # the coordinator's sweep settles the job: all its escrow back, nobody paid or recorded failed
    net.advance(market.claim_window_s() + 1)
    for reason, job_id in jobs.items():
        result = net.client.wait(job_id, timeout_s=60, until=SETTLED)
        assert result.status == JobStatus.ABORTED, (reason, result.status)
        assert result.record.refunded == MAX_FEE and not result.record.payouts and not result.record.failed_nodes
    # every node is still up and serves the next job
    ok = net.client.wait(net.client.submit(model_id, {"input_ids": [4, 5]}, JobParams(max_new_tokens=3), MAX_FEE))
    assert ok.status == JobStatus.COMPLETED


def test_books_reconcile_with_events(net):
    from shardnet.bindings import Contracts

    ledger = net.ledger()  # every event up to a block; the state read below is the state there
    at = Contracts(net.chain, ledger.block)  # (audits and claims go on in the background)
    escrows = sum(job.escrow for job in ledger.jobs.values())
    credits = sum(acct.credit for acct in ledger.accounts.values())
    assert net.chain.w3.eth.get_balance(net.c.market.address, ledger.block) == escrows + credits
    for node in (dev_account(i).address for i in (2, 3, 4)):
        assert ledger.accounts[node].credit == at.market.credit(node)
        assert ledger.accounts[node].open_jobs == 0


def test_restarted_node_never_submits_twice(net):
    model_id, _ = net.models["tiny-gpt2"]
    done = net.client.wait(net.client.submit(model_id, {"input_ids": [9, 8]}, JobParams(max_new_tokens=4), MAX_FEE))
    last_node = done.record.route[-1][0]
    index = [dev_account(2 + i).address for i in range(3)].index(last_node)
    restarted_at = net.chain.w3.eth.block_number
    net.kill(f"node{index}")
    net.start_node(index)
    net.wait_ready(index)
    again = net.client.wait(
        net.client.submit(model_id, {"input_ids": [7, 6]}, JobParams(max_new_tokens=4), MAX_FEE), timeout_s=120
    )
    assert again.status == JobStatus.COMPLETED
    # since the restart the last stage sent exactly one result (its committee work aside)
    sent = [
        tx
        for b in range(restarted_at + 1, net.chain.w3.eth.block_number + 1)
        for tx in net.chain.w3.eth.get_block(b, full_transactions=True)["transactions"]
        if tx["from"] == last_node and tx["to"] == net.c.market.address
    ]
    calls = [net.c.market.contract.decode_function_input(tx["input"])[0].fn_name for tx in sent]
    assert [c for c in calls if c != "drawAudits"] == ["submitResult"]
    submits = [e for e in EventReader(net.chain, [net.c.market.address]).poll() if e.name == "ResultSubmitted"]
    job_ids = [e.args["jobId"] for e in submits]
    assert len(job_ids) == len(set(job_ids))


def test_coordinator_killed_under_load_resumes(net):
    """kill -9 the coordinator with jobs in flight, post more while it is down, restart it: it
    rebuilds its state from events and probes, routes what is waiting, routes nothing twice."""
    model_id, _ = net.models["tiny-gpt2"]
    client = net.client
    before = [client.submit(model_id, {"input_ids": [3, k]}, JobParams(max_new_tokens=3), MAX_FEE) for k in range(3)]
    net.kill("coordinator")
    during = [client.submit(model_id, {"input_ids": [4, k]}, JobParams(max_new_tokens=3), MAX_FEE) for k in range(3)]
    time.sleep(1)
    assert all(client.history(j).status == JobStatus.POSTED for j in during)  # nobody routes them now
    net.start_coordinator()
    results = [client.wait(j, timeout_s=120) for j in before + during]
    assert all(r.status == JobStatus.COMPLETED for r in results), [r.record.abort_reason for r in results]
    routed = [e.args["jobId"] for e in EventReader(net.chain, [net.c.market.address]).poll() if e.name == "JobRouted"]
    assert len(routed) == len(set(routed))


def test_auditor_reconciles_and_verifies_receipts(net):
    from shardnet.audit import Difference, reconcile, verify_receipts

    model_id, _ = net.models["tiny-gpt2"]
    _wait_all(net, _submit_all(net, model_id, [{"input_ids": [3, 1]}] * 2, [JobParams(max_new_tokens=2)] * 2))
    ledger = net.settled_ledger()  # audits drawn for these jobs settle in the background
    assert reconcile(net.chain, ledger) == []
    assert verify_receipts(net.chain, ledger) == []
    assert sum(len(j.receipts) for j in ledger.jobs.values()) >= 6
    # a ledger is compared with the state at its own last block: a job posted since is no difference
    net.client.wait(net.client.submit(model_id, {"input_ids": [4]}, JobParams(max_new_tokens=1), MAX_FEE))
    assert reconcile(net.chain, ledger) == []
    assert reconcile(net.chain, net.ledger()) == []
    # an inconsistent view (a job's escrow altered) is caught and named
    job_id = next(j for j, rec in ledger.jobs.items() if rec.receipts)
    ledger.jobs[job_id].escrow += 1
    diffs = reconcile(net.chain, ledger)
    assert Difference(f"job {job_id}", "escrow", ledger.jobs[job_id].escrow, ledger.jobs[job_id].escrow - 1) in diffs
    # a forged receipt is caught
    route = ledger.jobs[job_id].route
    if ledger.jobs[job_id].receipts:
        first = ledger.jobs[job_id].receipts[0]
        sig = first.signature
        ledger.jobs[job_id].receipts[0] = first._replace(signature=sig[:-1] + bytes([sig[-1] ^ 1]))
        assert any(f"job {job_id} stage 0" in p for p in verify_receipts(net.chain, ledger))
    assert route


def test_audit_and_job_cli(net):
    env = {"SHARDNET_DEPLOYMENT": str(net.deployment_path)}
    model_id, _ = net.models["tiny-gpt2"]
    done = net.client.wait(net.client.submit(model_id, {"input_ids": [5]}, JobParams(max_new_tokens=2), MAX_FEE))
    ok = run_cli("audit", "reconcile", env=env)
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stderr
    assert run_cli("audit", "verify-receipts", env=env).returncode == 0
    jobs = run_cli("audit", "jobs", "--status", "completed", "--json", env=env)
    assert jobs.returncode == 0 and all(row["status"] == "completed" for row in json.loads(jobs.stdout))
    node = run_cli("audit", "node", dev_account(2).address, "--json", env=env)
    assert json.loads(node.stdout)["jobs_done"] > 0 and json.loads(node.stdout)["stake"] == 10**18
    bad = run_cli("audit", "node", "0x1234", env=env)
    assert bad.returncode != 0 and "0x followed by 40 hex digits" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli("job", "status", "99999", env=env)
    assert missing.returncode == 1 and "does not exist" in missing.stderr and "Traceback" not in missing.stderr
    status = run_cli("job", "status", str(done.record.job_id), env=env)
    assert status.returncode == 0 and f"job {done.record.job_id}:" in status.stdout
    hops = len(done.record.route) * len(done.output["tokens"]) - 1  # the prompt's way, then each token's round
    assert f"timing: data plane {done.output['timing']['data_plane_ms']:.1f} ms, {hops} hops between" in status.stdout


def test_every_honest_stage_passes_re_execution(net):
    """A committee member re-running each stage from its transcript finds every honest stage
    within tolerance: decoders and encoders, generation, embeddings and forward, int8 and fp32."""
    from node.executor import Executor
    from node.verifier import TOLERANCE, check_job

    jobs = []
    for source, job_input, kind in (
        ("tiny-gpt2", {"input_ids": [11, 12, 13]}, "generate"),
        ("tiny-llama", {"input_ids": [4, 8, 15, 16]}, "generate"),
        ("tiny-llama", {"input_ids": [23, 42]}, "forward"),
        ("minilm", {"texts": ["a sentence", "another, longer sentence"]}, "embed"),
    ):
        for wire in ("int8", "fp32"):
            params = JobParams(kind=kind, wire=wire, max_new_tokens=6)
            jobs.append((source, params, net.client.submit(net.models[source][0], job_input, params, MAX_FEE)))
    executor, spans = Executor(net.ipfs, 10.0), {}
    checked, worst = 0, 0.0
    for source, params, job_id in jobs:
        result = net.client.wait(job_id, timeout_s=180)
        r = result.record
        assert result.status == JobStatus.COMPLETED and result.output is not None and r.coordinator is not None
        for k, verdict in enumerate(check_job(executor, r, net.models[source][1], result.output, spans)):
            assert verdict.honest, (source, params.kind, params.wire, k, verdict)
            checked += 1
            worst = max(worst, verdict.worst_error)
    print(f"honest stages re-run: {checked}, worst relative error {worst:.2e} (tolerance {TOLERANCE:.0e})")
    assert checked == 3 * len(jobs) and worst < TOLERANCE / 2


def test_the_exact_route_cost_with_the_audit_reserve_is_enough_and_a_wei_less_is_refused(net):
    """The escrow a job needs: stage fees, the coordinator's cut, and (a job that may be audited)
    the committees' reserve; the coordinator says what it costs when it is short."""
    model_id, _ = net.models["tiny-gpt2"]
    model, terms = net.c.models.model(model_id), net.c.market.terms()
    fees = model.block_count * model.price_per_block
    cost = fees + fees * terms.coordinator_fee_bps // 10_000
    cost += fees * terms.committee_size * terms.verify_fee_bps // 10_000  # the network audits every job
    params = JobParams(kind="forward")
    exact = net.client.wait(net.client.submit(model_id, {"input_ids": [1, 2]}, params, cost), timeout_s=120)
    assert exact.status == JobStatus.COMPLETED, exact.record.abort_reason
    short = net.client.wait(net.client.submit(model_id, {"input_ids": [1, 2]}, params, cost - 1), timeout_s=120)
    assert short.status == JobStatus.ABORTED and f">= {cost}" in (short.record.abort_reason or "")


def test_an_input_longer_than_the_models_context_is_refunded_with_a_reason(net):
    """Stage 0 cannot run 300 tokens through a model with 256 positions: the job is aborted with
    the reason at once (not left to hang until its deadline), and the network keeps serving.
    (Its refund follows the claim window: see test_bad_jobs_are_refunded_with_a_reason_and_nodes_keep_serving.)"""
    model_id, _ = net.models["tiny-gpt2"]
    params = JobParams(kind="forward")
    long = net.client.wait(net.client.submit(model_id, {"input_ids": [1] * 300}, params, MAX_FEE), timeout_s=60)
    assert long.aborted and "300 tokens exceed the model's context of 256" in (long.record.abort_reason or "")
    generate = JobParams(kind="generate", max_new_tokens=60)
    over = net.client.wait(net.client.submit(model_id, {"input_ids": [1] * 200}, generate, MAX_FEE), timeout_s=60)
    assert over.aborted and "lower max_new_tokens to 57" in (over.record.abort_reason or "")
    ok = net.client.wait(net.client.submit(model_id, {"input_ids": [1, 2]}, params, MAX_FEE), timeout_s=60)
    assert ok.status == JobStatus.COMPLETED


def test_a_generation_streams_its_tokens_to_its_client_only_and_they_equal_the_result(net):
    """The last stage streams each token to the client that posted the job while the job runs;
    the streamed tokens equal the on-chain output, from Python and from `job submit --stream`;
    any other key is refused."""
    import httpx

    from shardnet.signing import sign_request

    model_id, _ = net.models["tiny-gpt2"]
    job_id = net.client.submit(model_id, {"input_ids": [5, 6, 7]}, JobParams(max_new_tokens=24), MAX_FEE)
    unsettled: list[bool] = []  # for each batch: was the job still running (no result on-chain)?

    def on_tokens(tokens: list[int]) -> None:
        unsettled.append(net.client.history(job_id).status == JobStatus.ROUTED)

    result, streamed = net.client.stream(job_id, on_tokens, timeout_s=120)
    assert result.status == JobStatus.COMPLETED, result.record.abort_reason
    assert streamed == result.output["tokens"] and len(streamed) == 24
    assert unsettled and unsettled[0]  # tokens came before the result was on-chain

    last = net.c.nodes.node(result.record.route[-1].node).endpoint
    path, body = f"/v1/jobs/{job_id}/tokens", b"{}"
    stranger = httpx.post(last + path, content=body, headers=sign_request(dev_account(13), path, body))
    assert stranger.status_code == 403 and "only the client" in stranger.json()["error"]
    unsigned = httpx.post(last + path, content=body)
    assert unsigned.status_code == 401

    env = {"SHARDNET_DEPLOYMENT": str(net.deployment_path)}
    args = ["job", "submit", "--model", str(model_id), "--input-ids", "5,6,7", "--max-new-tokens", "24"]
    out = run_cli(*args, "--stream", "--json", env=env, timeout=180)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    chunks = [json.loads(line)["tokens"] for line in lines if line.startswith('{"tokens"')]
    job = json.loads("\n".join(line for line in lines if not line.startswith('{"tokens"')))
    assert (
        [t for chunk in chunks for t in chunk] == job["output"]["tokens"] == streamed
    )  # greedy: same prompt, same tokens


def test_the_explorer_shows_live_nodes_and_a_jobs_input_and_output(net, tmp_path):
    """The explorer probes each node's agent (all alive here) and reads a job's input and output
    from IPFS, showing the prompt's tokens and the generated text and tokens."""
    from fastapi.testclient import TestClient

    from shardnet.explorer import create_app

    model_id, _ = net.models["tiny-gpt2"]
    done = net.client.wait(net.client.submit(model_id, {"input_ids": [9, 8, 7]}, JobParams(max_new_tokens=4), MAX_FEE))
    app = create_app(net.chain, tmp_path / "explorer.sqlite", 0.2, ipfs=net.ipfs, probe_interval_s=0.5)
    with TestClient(app) as explorer:
        deadline = time.monotonic() + 30
        while f"#{done.record.job_id}" not in (home := explorer.get("/").text) or home.count(">alive<") < 3:
            assert time.monotonic() < deadline, "the explorer did not index the job and probe the nodes"
            time.sleep(0.3)
        page = explorer.get(f"/jobs/{done.record.job_id}").text
        assert 'tokens (3): <span class="mono">9 8 7</span>' in page  # the input, from IPFS
        generated = " ".join(map(str, done.output["tokens"]))
        assert f'tokens ({len(done.output["tokens"])}): <span class="mono">{generated}</span>' in page
        node = done.record.route[0].node
        assert ">alive<" in explorer.get(f"/nodes/{node}").text


def test_a_waiting_client_wakes_on_its_jobs_events_rather_than_polling(net):
    model_id, _ = net.models["tiny-gpt2"]
    job_id = net.client.submit(model_id, {"input_ids": [6, 2]}, JobParams(max_new_tokens=2), MAX_FEE)
    notices = net.client._notices(job_id)  # the deployment has a websocket: the client subscribes
    assert notices is not None
    try:
        assert notices.wait(30)  # the job's next event (routed) arrives as a notice
    finally:
        notices.close()
    started = time.monotonic()
    result = net.client.wait(job_id, poll_s=120)  # polling this slowly would take two minutes
    assert result.status == JobStatus.COMPLETED and time.monotonic() - started < 60


def test_a_waiting_client_reads_the_output_as_soon_as_the_result_names_it(net, monkeypatch):
    """The ResultSubmitted notice starts the output's read (in a thread) while the client reads
    the job's history; the history still decides which output is the result. The read goes to the
    last stage, which hands the output to the client that posted the job only; its bytes are
    IPFS's, and an endpoint that lies about them is passed over for IPFS."""
    import httpx

    from shardnet.signing import sign_request

    model_id, _ = net.models["tiny-gpt2"]
    handed = "shardnet_outputs_handed_total"
    handed_before = sum(node_metric(port, handed) for port in net.node_ports)
    threads, read, history = [], net.client.read_output, net.client.history

    def recorded(job_id, cid):
        threads.append(threading.current_thread().name)
        return read(job_id, cid)

    def settled_history(job_id):
        # A history read that finds the result has its notice (mined in the same block) come
        # meanwhile: the notice may not have been sent yet when the read returns.
        record = history(job_id)
        if record.output_cid:
            time.sleep(0.5)
        return record

    monkeypatch.setattr(net.client, "read_output", recorded)
    monkeypatch.setattr(net.client, "history", settled_history)
    # (long enough not to end while the client reads its history the first time: a job routed and
    # run by then has its result's notice come before the client knows the route, and is read
    # from IPFS)
    job_id = net.client.submit(model_id, {"input_ids": [4, 1]}, JobParams(max_new_tokens=12), MAX_FEE)
    result = net.client.wait(job_id)  # subscribed long before the job can be routed and run
    assert result.status == JobStatus.COMPLETED and len(result.output["tokens"]) == 12
    assert len(threads) == 1 and threads[0].startswith("output-read")
    assert sum(node_metric(port, handed) for port in net.node_ports) == handed_before + 1
    assert result.output == json.loads(net.ipfs.cat(result.record.output_cid))

    last_node = result.record.route[-1].node
    last = net.c.nodes.node(last_node).endpoint
    path = f"/v1/jobs/{job_id}/output"
    stranger = httpx.post(last + path, content=b"", headers=sign_request(dev_account(13), path, b""))
    assert stranger.status_code == 403 and "only the client" in stranger.json()["error"]
    assert httpx.post(last + path, content=b"").status_code == 401
    first = net.c.nodes.node(result.record.route[0].node).endpoint  # not the last stage: holds none
    elsewhere = httpx.post(first + path, content=b"", headers=sign_request(net.client.chain.account, path, b""))
    assert elsewhere.status_code == 404 and "read it from IPFS" in elsewhere.json()["error"]
    port = net.node_ports[[dev_account(2 + i).address for i in range(len(net.node_ports))].index(last_node)]
    liar = Relay(port, tamper=lambda data: data.replace(b'"tokens"', b'"tokenz"'))
    try:  # the client's read, through an endpoint that changes the bytes: IPFS's are taken
        net.client._last_stages[job_id] = (last_node, f"http://127.0.0.1:{liar.port}")
        assert net.client.read_output(job_id, result.record.output_cid) == result.output
    finally:
        net.client._last_stages.pop(job_id, None)
        liar.close()


def test_a_relay_between_two_nodes_sees_only_ciphertext_and_its_replay_delivers_nothing(net):
    """Stages talk over encrypted links (node/link.py). A node registered behind a relay, which
    records every byte other nodes send it: a job through it completes, the relay sees no message
    header, token or node address in the clear, and resending a recorded link is refused (its
    frames do not decrypt under the fresh session) while the next job still completes."""
    import signal

    model_id, _ = net.models["tiny-gpt2"]
    target = 1
    address = dev_account(2 + target).address
    relay = Relay(net.node_ports[target])
    try:
        net.kill(f"node{target}", signal.SIGTERM)
        net.node_overrides[target] = {"endpoint": f"http://127.0.0.1:{relay.port}"}
        net.start_node(target)
        net.wait_ready(target)
        assert net.c.nodes.node(address).endpoint.endswith(f":{relay.port}")
        params = JobParams(max_new_tokens=4, wire="fp32", avoid=net.rivals(model_id, address))
        job_id = net.client.submit(model_id, {"input_ids": [3, 1, 4, 1]}, params, MAX_FEE)
        result = net.client.wait(job_id, timeout_s=120)
        assert result.status == JobStatus.COMPLETED, result.record.abort_reason
        route = [s.node for s in result.record.route]
        assert address in route and len(route) > 1
        links = [i for i, sent in enumerate(relay.sent) if sent.startswith(b"GET /v1/link")]
        assert links, "no link passed the relay"
        seen = b"".join(bytes(relay.sent[i]) + bytes(relay.answered[i]) for i in links)
        clear = [b'"kind"', b'"step"', b'"tokens"', b'"chain"', b'"ack"', *(n.encode() for n in route)]
        clear += [n[2:].lower().encode() for n in route]
        assert [c for c in clear if c in seen] == []
        bad_frames = 'shardnet_requests_refused_total{reason="bad-frame"}'
        before = node_metric(net.node_ports[target], bad_frames)
        answer = relay.replay(links[0])
        assert answer.startswith(b"HTTP/1.1 101")  # the upgrade and the handshake are answered...
        assert node_metric(net.node_ports[target], bad_frames) == before + 1  # ...the first recorded frame is not
        again = net.client.submit(model_id, {"input_ids": [2, 7]}, params, MAX_FEE)
        assert net.client.wait(again, timeout_s=120).status == JobStatus.COMPLETED
    finally:
        relay.close()
        net.node_overrides.pop(target, None)
        if f"node{target}" in net.procs:
            net.kill(f"node{target}", signal.SIGTERM)
        net.start_node(target)
        net.wait_ready(target)
