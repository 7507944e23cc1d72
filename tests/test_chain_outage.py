"""A chain that stops answering (restarting, say) must not end an agent's task: a transaction
is logged as not sent and the caller tries again later; an audit's reads of the chain wait for
it to answer again; the coordinator's expiry sweep skips a round."""

import asyncio
import logging
import socket

import pytest
import requests

from shardnet.chain import dev_account


def _dead_url() -> str:
    """A loopback URL nobody listens on (a real refused connection, as from a chain that is down)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_a_transaction_to_a_chain_that_does_not_answer_is_logged_not_raised(caplog: pytest.LogCaptureFixture):
    from shardnet.bindings import send_logged

    url = _dead_url()

    def submit(*, account: object) -> dict[str, object]:
        requests.post(url, json={"jsonrpc": "2.0", "method": "eth_sendRawTransaction"}, timeout=2)
        return {}

    with caplog.at_level(logging.WARNING):
        sent = asyncio.run(send_logged(logging.getLogger("t"), "commit(audit 1)", submit, account=dev_account(1)))
    assert sent is None
    assert "commit(audit 1) not sent: the chain does not answer (ConnectionError)" in caplog.text


def test_an_audit_waits_for_the_chain_to_answer_again(monkeypatch: pytest.MonkeyPatch):
    """Committee._past (is a commit or reveal deadline over?) asks again while the chain refuses
    connections (`read_waiting`, which a stage's delivery claim waiting out a deadline uses
    too), instead of ending the audit's task."""
    import node.committee as committee_mod
    import shardnet.bindings.base as base

    monkeypatch.setattr(base, "READ_RETRY_FIRST_S", 0.01)
    url = _dead_url()
    asked: list[int] = []

    class Restarting:
        def past(self, deadline: int, slack_s: float) -> bool:
            asked.append(deadline)
            if len(asked) < 3:
                requests.get(url, timeout=2)  # refused: the chain is down
            return True

    committee = object.__new__(committee_mod.Committee)
    committee.chain = Restarting()  # type: ignore[assignment]
    assert asyncio.run(committee._past(1234)) is True
    assert asked == [1234] * 3


def test_the_coordinators_expiry_sweep_outlives_a_chain_that_does_not_answer():
    """A sweep that finds the chain down (refused connection) is skipped; the next one expires
    the overdue job. The loop used to end on the first failed read, and no job expired again."""
    from types import SimpleNamespace

    from coordinator.expiry import expire_overdue
    from shardnet.ledger import JobRecord, Ledger
    from shardnet.protocol import JobStatus

    url = _dead_url()
    reads: list[int] = []

    def get_block(which: str) -> dict[str, int]:
        reads.append(1)
        if len(reads) < 3:
            requests.post(url, timeout=2)  # refused: the chain is down
        return {"timestamp": 2_000}

    chain = SimpleNamespace(w3=SimpleNamespace(eth=SimpleNamespace(get_block=get_block)))
    market = SimpleNamespace(claim_window_s=lambda: 60, expire_job=object())
    ledger = Ledger()
    ledger.jobs[1] = JobRecord(1, "0xc", 1, "Qm", b"", 10, deadline=1_000, escrow=10)
    assert ledger.jobs[1].status == JobStatus.POSTED
    expired: list[tuple[str, tuple[object, ...]]] = []

    async def tx(what: str, fn: object, *args: object) -> bool:
        expired.append((what, args))
        return True

    async def sweep_a_while() -> None:
        task = asyncio.ensure_future(expire_overdue(chain, market, ledger, tx, 0.01))  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        assert not task.done(), task.exception() if task.done() else None
        task.cancel()

    asyncio.run(sweep_a_while())
    assert len(reads) >= 3
    assert expired and expired[0][0] == "expireJob(1)"
