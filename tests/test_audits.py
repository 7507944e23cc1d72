"""Audits on the real stack: node processes draw the audits of completed jobs, re-run the audited
stages from their transcripts, commit and reveal their votes, and resolve. A node serving
garbage is found wrong and slashed, its fee goes back to the client, the committee is paid; a
member that lies is outvoted and loses its penalty; honest stages stand and are paid after the
audit window."""

from __future__ import annotations

import json
import signal
import time

import pytest

from shardnet.audit import reconcile
from shardnet.chain import dev_account
from shardnet.client import Client
from shardnet.events import EventReader
from shardnet.jobs import JobParams
from shardnet.ledger import Ledger
from shardnet.localnet import Network
from shardnet.model.architectures import PRESETS
from shardnet.protocol import JobStatus, Vote
from tests.conftest import run_cli

pytestmark = pytest.mark.stack  # starts its own chain, IPFS daemon and node processes

MAX_FEE = 10**15
CHEAT, LIAR = 0, 3  # node indices: serves garbage; votes against its own check


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    network = Network(
        tmp_path_factory.mktemp("audits"),
        nodes=4,
        # the cheater has stake to spare, so it stays active (and routable) after its first slash
        node_overrides={CHEAT: {"misbehave": "garbage", "stake_wei": 5 * 10**18}, LIAR: {"misbehave": "lie_vote"}},
    ).start()
    network.model_id, network.manifest_cid = network.publish("tiny-gpt2")
    network.wait_confirmed(network.model_id, 4)
    network.client = Client.from_deployment(dev_account(12), network.deployment)
    yield network
    network.stop()


def wait_resolved(net: Network, job_id: int) -> Ledger:
    """The chain's events once every audit of `job_id` resolved."""
    return net.resolved_audits([job_id])[0]


def test_a_cheating_stage_is_caught_slashed_and_refunded_and_a_liar_outvoted(net):
    cheat, liar = dev_account(2 + CHEAT).address, dev_account(2 + LIAR).address
    # route through the cheater: avoid every other node that serves its blocks
    params = JobParams(kind="forward", wire="fp32", audit_rate=1.0, avoid=net.rivals(net.model_id, cheat))
    stake_before = net.c.nodes.node(cheat).stake
    job_id = net.client.submit(net.model_id, {"input_ids": [3, 1, 4, 1, 5]}, params, MAX_FEE)
    result = net.client.wait(job_id, timeout_s=120)
    assert result.status == JobStatus.COMPLETED, result.record.abort_reason
    route = result.record.route
    assert cheat in [s.node for s in route]
    ledger = wait_resolved(net, job_id)
    audits = sorted((a for a in ledger.audits.values() if a.job_id == job_id), key=lambda a: a.stage)
    assert [a.stage for a in audits] == list(range(len(route)))  # audit rate 1: every stage
    for audit in audits:
        assert audit.node == route[audit.stage].node and audit.node not in audit.members
        assert audit.upheld == (audit.node == cheat), audit  # the garbage stage, and only it, is found wrong
        if liar in audit.members:  # the liar voted against the majority and paid for it
            assert audit.votes[liar] == (1 if audit.upheld else 2) and audit.outvoted[liar] > 0
    cheater_audit = next(a for a in audits if a.upheld)
    assert cheater_audit.slashed > 0
    assert net.c.nodes.node(cheat).stake == stake_before - cheater_audit.slashed
    # the client got the cheater's fee (and the cut on it) back; honest stages keep theirs
    job = ledger.jobs[job_id]
    assert "StageRevoked" in [name for _, name in job.history]
    assert job.payouts[cheat] == 0
    assert [job.payouts[s.node] for s in route if s.node != cheat] == [s.fee for s in route if s.node != cheat]
    # members on the majority were paid for the work from the client's reserve; the liar never
    paid = {to for a in audits for to, _, why in a.paid if why == "verification"}
    assert paid and liar not in paid
    # and the books still balance to the wei, the Verifier's included
    assert reconcile(net.chain, net.settled_ledger()) == []
    # an auditor sees it all from the command line
    env = {"SHARDNET_DEPLOYMENT": str(net.deployment_path)}
    shown = json.loads(run_cli("audit", "audits", "--job", str(job_id), "--json", env=env).stdout)
    assert [(a["stage"], a["verdict"]) for a in shown] == [(a.stage, "wrong" if a.upheld else "right") for a in audits]
    losses = json.loads(run_cli("audit", "losses", "--json", env=env).stdout)
    assert losses[0]["address"] == cheat and losses[0]["slashed_as_stage"] == cheater_audit.slashed
    assert any(e["address"] == liar and e["outvoted_penalties"] > 0 for e in losses)


def test_a_client_challenges_a_stage_from_the_command_line_and_is_rewarded(net):
    """`shardnet job challenge`: an unaudited job's cheating stage, sent to a committee with a
    bond, is found wrong; the client gets its fee back and its bond twice over."""
    from dataclasses import replace

    net.c.market.set_terms(replace(net.c.market.terms(), min_audit_bps=0))  # nothing drawn by chance
    cheat = dev_account(2 + CHEAT).address
    params = JobParams(kind="forward", wire="int8", avoid=net.rivals(net.model_id, cheat))
    result = net.client.wait(net.client.submit(net.model_id, {"input_ids": [2, 7, 1]}, params, MAX_FEE), timeout_s=120)
    assert result.status == JobStatus.COMPLETED
    stage = next(k for k, s in enumerate(result.record.route) if s.node == cheat)
    env = {"SHARDNET_DEPLOYMENT": str(net.deployment_path)}
    shown = run_cli("job", "challenge", str(result.record.job_id), str(stage), "--json", env=env)
    assert shown.returncode == 0, shown.stderr
    audit_id = json.loads(shown.stdout)["audit_id"]
    ledger = wait_resolved(net, result.record.job_id)
    audit = ledger.audits[audit_id]
    assert audit.upheld and audit.challenger == net.client.c.chain.account.address
    bond = net.c.verifier.challenge_bond()
    assert (net.client.c.chain.account.address, 2 * bond, "bond back and reward") in audit.paid
    again = run_cli("job", "challenge", str(result.record.job_id), str(stage), env=env)
    assert again.returncode != 0 and "AlreadyUnderAudit" in again.stderr


def test_an_operator_sees_pending_earnings_and_withdraws_them_after_the_window(net):
    """`shardnet node earnings` / `withdraw`: fees wait out the audit window, then come out."""
    ledger = net.ledger()
    served = {s.node for job in ledger.jobs.values() for s in job.route}
    honest = next(i for i in range(4) if i != CHEAT and dev_account(2 + i).address in served)
    config = str(net.home / f"node{honest}.toml")
    before = json.loads(run_cli("node", "earnings", "--config", config, "--json").stdout)
    assert before["pending_wei"] > 0 and before["pending_until"] > 0
    early = json.loads(run_cli("node", "withdraw", "--config", config, "--json").stdout)
    assert "market" not in early["withdrawn_wei"]  # nothing of the market's is withdrawable yet
    net.chain.w3.provider.make_request("evm_increaseTime", [2 * net.c.market.epoch_length_s()])
    net.chain.w3.provider.make_request("evm_mine", [])
    address = dev_account(2 + honest).address
    done = json.loads(run_cli("node", "withdraw", "--config", config, "--json").stdout)
    assert done["withdrawn_wei"]["market"] >= before["pending_wei"] and done["pending_wei"] == 0
    sent = [
        e.args["amount"]
        for e in EventReader(net.chain).poll()
        if e.name == "Withdrawn" and e.args["account"] == address
    ]
    assert sent[-1] == done["withdrawn_wei"]["market"]  # the ETH left the market for the operator
    after = json.loads(run_cli("node", "earnings", "--config", config, "--json").stdout)
    assert (after["withdrawable_wei"], after["committee_pay_wei"]) == (0, 0)


def test_a_private_job_leaves_only_ciphertext_on_ipfs_and_its_committees_still_check_it(net):
    """`private`: the input, every transcript and the output on IPFS are encrypted under a job
    key the client hands only to the route's nodes; the client reads its result, which equals the
    same job run in the open; every stage is audited by committees that ask the route for the key
    (a stranger asking is refused), and all stand; the tokens are not streamed in the clear."""
    import httpx

    from shardnet.sealing import is_sealed
    from shardnet.signing import sign_request
    from shardnet.transcripts import MAGIC as TRANSCRIPT_MAGIC

    cheat = dev_account(2 + CHEAT).address
    prompt = [7, 3, 9, 1]
    params = JobParams(max_new_tokens=5, audit_rate=1.0, private=True)
    job_id = net.client.submit(net.model_id, {"input_ids": prompt}, params, MAX_FEE)
    result = net.client.wait(job_id, timeout_s=120)
    assert result.status == JobStatus.COMPLETED, result.record.abort_reason
    tokens = result.output["tokens"]  # the client opened its output
    if cheat in [s.node for s in result.record.route]:  # garbage may reach the end-of-text token early
        assert 1 <= len(tokens) <= 5 and (len(tokens) == 5 or tokens[-1] == PRESETS["tiny-gpt2"]().eos_token_id)
    else:  # honest all the way: as in the open
        assert len(tokens) == 5
        opened = JobParams(max_new_tokens=5, avoid=net.rivals(net.model_id, result.record.route[0].node))
        in_the_open = net.client.wait(net.client.submit(net.model_id, {"input_ids": prompt}, opened, MAX_FEE))
        if [s.node for s in in_the_open.record.route] == [s.node for s in result.record.route]:
            assert result.output["tokens"] == in_the_open.output["tokens"]
    record = result.record
    stored = [net.ipfs.cat(record.input_cid), net.ipfs.cat(record.output_cid)]
    stored += [net.ipfs.cat(cid) for cid in result.output["transcripts"]]
    assert all(is_sealed(data) for data in stored)
    assert b"input_ids" not in stored[0] and b'"tokens"' not in stored[1]
    assert all(not data.startswith(TRANSCRIPT_MAGIC) for data in stored[2:])
    # a node of the route gives the key to committee members only
    node = record.route[0].node
    path, body = f"/v1/jobs/{job_id}/key-for-audit", b'{"audit": 1}'
    stranger = httpx.post(
        net.c.nodes.node(node).endpoint + path, content=body, headers=sign_request(dev_account(13), path, body)
    )
    assert stranger.status_code == 403 and "not a member" in stranger.json()["error"]
    tokens = f"/v1/jobs/{job_id}/tokens"
    last = net.c.nodes.node(record.route[-1].node).endpoint
    refused = httpx.post(last + tokens, content=b"{}", headers=sign_request(net.client.chain.account, tokens, b"{}"))
    assert refused.status_code == 403 and "private" in refused.json()["error"]
    # every stage audited, by committees that read the sealed transcripts with the job key
    ledger, by_job = net.resolved_audits([job_id], every_stage=True)
    audits = by_job[job_id]
    assert [a.stage for a in audits] == list(range(len(record.route)))
    liar = dev_account(2 + LIAR).address
    for audit in audits:
        assert audit.upheld == (audit.node == cheat), audit  # only a garbage stage is found wrong
        right = Vote.WRONG if audit.upheld else Vote.CORRECT
        assert all(audit.votes.get(m) == right for m in audit.members if m != liar), audit


def test_a_private_job_whose_client_never_hands_over_the_key_is_aborted_with_the_reason(net):
    """The job key lives with the client: a private job posted by a client that never hands it
    to the route cannot be opened by stage 0, which aborts it, saying why (the client is refunded
    for every stage that did not deliver: none did)."""
    from shardnet.sealing import encrypt, new_job_key

    sealed = encrypt(new_job_key(), b'{"input_ids": [1, 2]}', "input")  # under a key nobody is given
    input_cid = net.ipfs.add(sealed, name="job-input.json")
    deadline = net.chain.w3.eth.get_block("latest")["timestamp"] + 600
    params = JobParams(max_new_tokens=2, private=True)
    job_id = net.client.c.market.post_job(net.model_id, input_cid, params.encode(), MAX_FEE, deadline)
    result = net.client.wait(job_id, timeout_s=120)  # this Client holds no key for it: it hands none over
    assert result.aborted and "has not handed over the job key" in (result.record.abort_reason or "")
    assert not any(result.record.payouts.values())


def test_a_member_restarted_between_commit_and_reveal_still_reveals(net):
    """A committee member that dies the moment its vote is committed (misbehave
    exit_after_commit) finds the vote it saved when it restarts, reveals it and the audit
    resolves with it counted, not absent. The chain's clock runs ahead of this machine's here (the
    operator test moved it on) and stands still while the chain is idle: deadlines still pass."""
    member = 1  # honest
    address, name = dev_account(2 + member).address, f"node{member}"
    net.kill(name, signal.SIGTERM)
    net.node_overrides[member] = {"misbehave": "exit_after_commit"}
    net.start_node(member)
    net.wait_ready(member)
    proc = net.procs[name]
    params = JobParams(kind="forward", wire="fp32", audit_rate=1.0)
    for _ in range(6):  # every stage audited, by two of the three other nodes: it is drawn soon
        job_id = net.client.submit(net.model_id, {"input_ids": [4, 2]}, params, MAX_FEE)
        assert net.client.wait(job_id, timeout_s=120).status == JobStatus.COMPLETED
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            audits = [a for a in net.ledger().audits.values() if a.job_id == job_id]
            if audits and all(a.resolved for a in audits):
                break
            time.sleep(0.5)
        if proc.poll() is not None:
            break
    assert proc.poll() == 3, "the member was never drawn onto a committee"
    net.procs.pop(name)
    del net.node_overrides[member]
    ledger = net.ledger()
    (audit,) = [a for a in ledger.audits.values() if address in a.committed and not a.resolved]
    assert address not in audit.votes  # it died between commit and reveal
    net.start_node(member)
    ledger, _ = net.resolved_audits([audit.job_id])
    resolved = ledger.audits[audit.audit_id]
    assert address not in resolved.absent  # revealed after the restart, and voted as it checked
    assert resolved.votes[address] == (Vote.WRONG if resolved.upheld else Vote.CORRECT)
    assert resolved.upheld == (resolved.node == dev_account(2 + CHEAT).address)
    assert reconcile(net.chain, net.settled_ledger()) == []
