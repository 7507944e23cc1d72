"""Unit tests of the coordinator's view of node health (coordinator.health) and its rerouting
around a dead node (coordinator.failover). The real-stack counterparts: tests/test_failover.py
(kill -9 of a node mid-generation) and tests/test_liveness.py."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from coordinator import health as health_module
from coordinator.failover import replica, reroute_around
from coordinator.health import DEFAULT_RTT_MS, Change, NodeHealth, probe
from shardnet.events import Event
from shardnet.ledger import Ledger
from shardnet.protocol import Assignment, JobStatus, Stage
from tests.helpers import http_server

A, B, C, D = ("0x" + c * 40 for c in "abcd")
COORD, OTHER_COORD = "0x" + "cc" * 20, "0x" + "dd" * 20


def test_two_missed_probes_in_a_row_take_a_node_down_and_one_answer_brings_it_back():
    h = NodeHealth(replan_after_s=60.0)
    assert h.missed(A) is Change.NONE  # one miss is not down
    assert h.answered(A, 2.0, {}) is Change.NONE and h.misses[A] == 0  # and an answer resets the count
    assert h.missed(A) is Change.NONE
    assert h.missed(A) is Change.DOWN
    assert h.missed(A) is Change.NONE  # down once, not again at every miss
    assert h.up({A, B}) == {B}
    assert h.answered(A, 2.0, {}) is Change.UP
    assert h.up({A, B}) == {A, B} and A not in h.down_since


def test_a_node_down_past_replan_after_s_is_gone_once(monkeypatch: pytest.MonkeyPatch):
    now = [1000.0]
    monkeypatch.setattr(health_module.time, "monotonic", lambda: now[0])
    h = NodeHealth(replan_after_s=60.0)
    h.missed(A)
    h.missed(A)
    now[0] += 59.0
    assert not h.gone(A) and not h.newly_gone(A)  # a restart's outage: rerouting covers it
    now[0] += 2.0
    assert h.gone(A)
    assert h.newly_gone(A) and not h.newly_gone(A)  # its spans are planned away once
    h.answered(A, 1.0, {})
    assert not h.gone(A) and A not in h.replanned  # back: a later outage is planned away again
    h.missed(A)
    h.missed(A)
    now[0] += 61.0
    assert h.newly_gone(A)


def test_answers_feed_round_trip_and_measured_compute_and_ignore_junk():
    h = NodeHealth(replan_after_s=60.0)
    assert h.rtt(A) == DEFAULT_RTT_MS  # not probed yet
    h.answered(A, 10.0, {"ms_per_block": 4})
    h.answered(A, 20.0, {"ms_per_block": 2.5})
    assert h.rtt(A) == pytest.approx(0.7 * 10.0 + 0.3 * 20.0)
    assert h.ms_per_block[A] == 2.5
    for junk in ({"ms_per_block": None}, {"ms_per_block": -1}, {"ms_per_block": True}, {"ms_per_block": "3"}, []):
        h.answered(A, 20.0, junk)
    assert h.ms_per_block[A] == 2.5  # what a node reports only counts when it is a positive number


async def test_probe_answers_only_a_200_with_json():
    documents: dict[str, web.Response] = {}

    async def handler(request: web.Request) -> web.Response:
        return documents[request.path]

    runner, base = await http_server("GET", handler)
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as http:
            documents["/ok/health"] = web.json_response({"ms_per_block": 3.0})
            answer = await probe(http, base + "/ok/")  # a trailing slash is fine
            assert answer is not None and answer[1] == {"ms_per_block": 3.0} and answer[0] > 0
            documents["/sick/health"] = web.json_response({"error": "x"}, status=503)
            assert await probe(http, base + "/sick") is None
            documents["/text/health"] = web.Response(text="fine")
            assert await probe(http, base + "/text") is None  # not JSON
            await runner.cleanup()
            assert await probe(http, base + "/ok") is None  # nobody listening
    finally:
        await runner.cleanup()


def _ledger(*confirmed: tuple[str, int, int]) -> Ledger:
    ledger = Ledger()
    for node, start, end in confirmed:
        ledger.assignments[1][node] = Assignment(start, end, True, COORD)
    return ledger


def _routed(ledger: Ledger, job_id: int, coordinator: str, *route: Stage) -> None:
    args = {"jobId": job_id, "client": A, "modelId": 1, "inputCid": "Qm", "params": b"{}", "maxFee": 9}
    ledger.apply(Event("JobPosted", args | {"deadline": 99, "auditBps": 0}, A, 1, "0x" + "00" * 32, 0))
    stages = [{"node": s.node, "start": s.start, "end": s.end, "fee": s.fee} for s in route]
    ledger.apply(
        Event(
            "JobRouted",
            {"jobId": job_id, "coordinator": coordinator, "stages": stages, "failedNodes": []},
            A,
            2,
            "0x" + "00" * 32,
            0,
        )
    )


def test_a_replica_is_usable_off_the_route_and_ends_where_the_dead_stage_ended():
    ledger = _ledger((A, 0, 4), (B, 4, 8), (C, 2, 8), (D, 4, 6))
    dead = Stage(B, 4, 8, 1)
    assert replica(ledger, 1, dead, {A, B, C, D}, {A, B}) == C  # covers [4, 8) from block 2
    assert replica(ledger, 1, dead, {A, B, D}, {A, B}) is None  # C not usable; D ends at 6
    assert replica(ledger, 1, dead, {A, B, C}, {A, B, C}) is None  # C already on the route
    ledger.assignments[1][D] = Assignment(4, 9, True, COORD)
    assert (
        replica(ledger, 1, dead, {A, B, D}, {A, B}) is None
    )  # D runs on past block 8: not where the next stage enters
    ledger.assignments[1][C] = Assignment(4, 8, False, COORD)
    assert replica(ledger, 1, dead, {A, B, C}, {A, B}) is None  # assigned, not confirmed


class FakeMarket:
    def reroute_job(self, *args: Any) -> None:
        raise AssertionError("the fake transaction sender never calls it")


async def test_reroute_around_moves_this_coordinators_jobs_to_replicas_and_leaves_the_rest():
    ledger = _ledger((A, 0, 4), (B, 4, 8), (C, 4, 8))
    _routed(ledger, 1, COORD, Stage(A, 0, 4, 1), Stage(B, 4, 8, 1))  # through the dead node: rerouted
    _routed(ledger, 2, OTHER_COORD, Stage(A, 0, 4, 1), Stage(B, 4, 8, 1))  # another coordinator's
    _routed(ledger, 3, COORD, Stage(A, 0, 4, 1), Stage(C, 4, 8, 1))  # not through it
    _routed(ledger, 4, COORD, Stage(A, 0, 4, 1), Stage(B, 4, 8, 1))
    ledger.jobs[4].status = JobStatus.COMPLETED  # over: left alone
    sent: list[tuple[str, tuple[Any, ...]]] = []

    async def tx(what: str, fn: Any, *args: Any) -> bool:
        sent.append((what, args))
        return True

    market: Any = FakeMarket()
    await reroute_around(B, COORD, ledger, {A, C}, market, tx)
    assert sent == [
        ("rerouteJob(1)", (1, COORD, [Stage(A, 0, 4, 1), Stage(B, 4, 8, 1)], [Stage(A, 0, 4, 1), Stage(C, 4, 8, 1)]))
    ]

    sent.clear()
    await reroute_around(B, COORD, ledger, {A}, market, tx)  # no usable replica: left to expire
    assert sent == []


def test_probe_round_trip_times_out_as_a_miss():
    async def main() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)  # accepts, never answers
        port = server.sockets[0].getsockname()[1]
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.2)) as http:
                assert await probe(http, f"http://127.0.0.1:{port}") is None
        finally:
            server.close()

    asyncio.run(main())
