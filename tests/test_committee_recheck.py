"""A committee member's check of an audited stage (node.committee.Committee._verdict) when the
evidence is not on IPFS yet, or the member's own IPFS daemon does not answer: it checks again
while the commit period leaves time. Evidence that turns up is judged on its merits; evidence
still missing at the end is a dishonest claim; a check the member never managed is no vote."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from types import SimpleNamespace

import pytest

import node.committee as committee_mod
from node.verifier import Verdict
from shardnet.errors import StorageUnavailable

HONEST = Verdict(True, "", 0.0, 3)
MISSING = Verdict(False, "stage 1: transcript Qm... cannot be read: IPFS /cat: timed out", float("inf"), 0, True)


class Clock:
    """The chain's clock as Chain.clock gives it: (latest block stamp, now)."""

    def clock(self) -> tuple[int, float]:
        return int(time.time()), time.time()


def _member(check: Callable[[float], Verdict], commit_in_s: float) -> tuple[committee_mod.Committee, list[float]]:
    """A committee member (only what _verdict uses) on audit 1, whose commit period ends in
    `commit_in_s`; each check calls `check(timeout)`. Returns it and the checks' timeouts."""
    committee = object.__new__(committee_mod.Committee)
    committee.chain = Clock()  # type: ignore[assignment]
    audit = SimpleNamespace(job_id=9, stage=1, commit_deadline=int(time.time() + commit_in_s))
    committee.ledger = SimpleNamespace(audits={1: audit})  # type: ignore[assignment]
    timeouts: list[float] = []

    def _check(job_id: int, stage: int, job_key: bytes | None, timeout: float) -> Verdict:
        timeouts.append(timeout)
        return check(timeout)

    committee._check = _check  # type: ignore[method-assign]
    return committee, timeouts


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(committee_mod, "RECHECK_S", 0.2)
    monkeypatch.setattr(committee_mod, "COMMIT_MARGIN_S", 0.5)
    monkeypatch.setattr(committee_mod, "MISSING_AFTER_S", 1.0)


def test_evidence_that_turns_up_before_the_commit_period_ends_is_judged_on_its_merits():
    answers = iter([MISSING, MISSING, HONEST])
    committee, timeouts = _member(lambda _: next(answers), commit_in_s=30)
    assert asyncio.run(committee._verdict(1, None)) == HONEST
    assert len(timeouts) == 3
    assert all(0 < t <= 30 for t in timeouts)  # reads never wait past the commit period


def test_evidence_still_missing_when_the_period_ends_is_a_dishonest_claim():
    committee, timeouts = _member(lambda _: MISSING, commit_in_s=4)
    started = time.monotonic()
    verdict = asyncio.run(committee._verdict(1, None))
    assert verdict is not None and not verdict.honest and verdict.missing
    assert len(timeouts) >= 2 and time.monotonic() - started < 4  # checked again, and done in time to commit


def test_a_member_whose_own_ipfs_does_not_answer_does_not_vote_against_the_stage():
    def down(_: float) -> Verdict:
        raise StorageUnavailable("the IPFS RPC API at http://127.0.0.1:5001 is not reachable")

    committee, timeouts = _member(down, commit_in_s=2)
    assert asyncio.run(committee._verdict(1, None)) is None  # no vote, rather than "wrong"
    assert len(timeouts) >= 2


def test_a_member_whose_ipfs_comes_back_votes():
    answers: list[Verdict | None] = [None, HONEST]

    def flaky(_: float) -> Verdict:
        answer = answers.pop(0)
        if answer is None:
            raise StorageUnavailable("the IPFS RPC API dropped the request")
        return answer

    committee, _ = _member(flaky, commit_in_s=30)
    assert asyncio.run(committee._verdict(1, None)) == HONEST


def test_a_member_serving_the_audit_late_does_not_judge_evidence_it_barely_looked_for():
    """A member that comes to the audit with little of the commit period left (it restarted, say)
    and does not find the evidence in that time casts no vote rather than a wrong one."""
    committee, timeouts = _member(lambda _: MISSING, commit_in_s=0)
    assert asyncio.run(committee._verdict(1, None)) is None
    assert len(timeouts) == 1
