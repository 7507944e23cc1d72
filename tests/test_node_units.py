"""The node's pure parts without a chain: the event filter, the data-plane app and receipts (the
saved state: tests/test_node_state.py; spans: tests/test_node_spans.py)."""

from __future__ import annotations

from types import SimpleNamespace

from fastapi.testclient import TestClient

from node.filter import AdoptRoute, ClaimAborted, DropJob, LoadSpan, StartJob, UnloadSpan, actions_for, my_stage
from node.server import create_app
from shardnet.events import Event
from shardnet.ledger import Ledger
from shardnet.protocol import Span, Stage

ME, OTHER, COORD = "0x" + "11" * 20, "0x" + "22" * 20, "0x" + "cc" * 20
_block = iter(range(1, 10_000))


def event(name: str, **args: object) -> Event:
    return Event(name, dict(args), "0x" + "00" * 20, next(_block), "0x" + "00" * 32, 0)


def stage(node: str, start: int, end: int) -> dict[str, object]:
    return {"node": node, "start": start, "end": end, "fee": 1}


def routed(ledger: Ledger, job_id: int, name: str, *stages: dict[str, object]) -> Event:
    e = event(name, jobId=job_id, coordinator=COORD, stages=list(stages), failedNodes=[])
    ledger.apply(e)
    return e


def posted(ledger: Ledger, job_id: int) -> None:
    ledger.apply(
        event(
            "JobPosted",
            jobId=job_id,
            client=OTHER,
            modelId=1,
            inputCid="Qm",
            params=b"{}",
            maxFee=9,
            deadline=99,
            auditBps=0,
        )
    )


def test_my_stage_finds_the_node_on_a_route():
    route = [Stage(OTHER, 0, 2, 1), Stage(ME, 2, 4, 1)]
    assert my_stage(ME, route) == 1 and my_stage(COORD, route) is None


def test_filter_maps_each_event_to_what_this_node_does():
    ledger = Ledger()
    assigned = event("ShardAssigned", modelId=1, node=ME, coordinator=COORD, start=0, end=3)
    assert actions_for(ME, assigned, ledger, set()) == [LoadSpan(1, Span(0, 3))]
    other = event("ShardAssigned", modelId=1, node=OTHER, coordinator=COORD, start=0, end=3)
    assert actions_for(ME, other, ledger, set()) == []
    released = event("ShardReleased", modelId=1, node=ME, by=COORD)
    assert actions_for(ME, released, ledger, set()) == [UnloadSpan(1)]

    posted(ledger, 7)
    first = routed(ledger, 7, "JobRouted", stage(ME, 0, 2), stage(OTHER, 2, 4))
    assert actions_for(ME, first, ledger, set()) == [StartJob(7)]
    assert actions_for(OTHER, first, ledger, set()) == []  # later stages wait for activations
    moved = routed(ledger, 7, "JobRerouted", stage(ME, 0, 2), stage(COORD, 2, 4))
    assert actions_for(ME, moved, ledger, {7}) == [AdoptRoute(7)]
    assert actions_for(OTHER, moved, ledger, {7}) == [DropJob(7)]  # taken off the route
    aborted = event("JobAborted", jobId=7, by=ME, reason="x", deadline=50)
    ledger.apply(aborted)  # routed: aborting, open to delivery claims until the claim window closes
    assert actions_for(ME, aborted, ledger, {7}) == [ClaimAborted(7)]  # it ran a stage: claim, then drop
    assert actions_for(ME, aborted, ledger, set()) == [DropJob(7)]  # nothing of it here
    posted(ledger, 8)
    refused = event("JobAborted", jobId=8, by=COORD, reason="y", deadline=99)
    ledger.apply(refused)  # never routed: settled at once
    assert ledger.jobs[8].status.name == "ABORTED" and actions_for(ME, refused, ledger, {8}) == [DropJob(8)]


def test_data_plane_app_refuses_unsigned_and_malformed_requests():
    refused: dict[str, int] = {}

    class Counter:
        def labels(self, reason: str) -> Counter:
            refused[reason] = refused.get(reason, 0) + 1
            return self

        def inc(self) -> None:
            pass

    agent = SimpleNamespace(
        metrics=SimpleNamespace(refused=Counter(), registry=None),
        health=lambda: {"ready": True},
    )
    client = TestClient(create_app(agent))  # type: ignore[arg-type]
    assert client.get("/health").json() == {"ready": True}
    response = client.post("/v1/jobs/1/tokens", content=b"x", headers={"x-shardnet-signature": ""})
    assert response.status_code == 401 and refused == {"bad-signature": 1}
    response = client.post("/v1/jobs/1/receipt", content=b"{}", headers={"x-shardnet-signature": "0x00"})
    assert response.status_code == 401 and refused == {"bad-signature": 2}
    gone = client.post("/v1/jobs/1/stages/1", content=b"x")  # activations travel only over links
    assert gone.status_code == 404


def test_oversize_messages_are_refused_before_they_are_read():
    from node.server import MAX_BODY_BYTES

    agent = SimpleNamespace(
        metrics=SimpleNamespace(refused=SimpleNamespace(labels=lambda r: SimpleNamespace(inc=lambda: None)))
    )
    client = TestClient(create_app(agent))  # type: ignore[arg-type]
    declared = client.post("/v1/jobs/1/receipt", content=b"x", headers={"content-length": str(MAX_BODY_BYTES + 1)})
    assert declared.status_code == 413

    def chunks():  # no length declared: refused once the limit is passed
        for _ in range(MAX_BODY_BYTES // (1 << 10) + 2):
            yield b"\0" * (1 << 10)

    streamed = client.post("/v1/jobs/1/tokens", content=chunks())
    assert streamed.status_code == 413


def test_malformed_activations_are_refused_with_the_reason():
    import struct

    import pytest
    import torch

    from shardnet.errors import ModelError
    from shardnet.model.quant import decode_activation, encode_activation

    x = torch.randn(1, 3, 8)
    for wire in ("int8", "fp16", "fp32"):
        good = encode_activation(x, wire)
        assert decode_activation(good).shape == (1, 3, 8)
        with pytest.raises(ModelError, match="needs"):
            decode_activation(good[:-1])  # truncated
    head = b'{"mode": "fp32", "shape": [100000, 100000, 100000]}'
    with pytest.raises(ModelError, match="over the limit"):
        decode_activation(struct.pack("<I", len(head)) + head)
    head = b'{"mode": "fp32", "shape": [-1, 3]}'
    with pytest.raises(ModelError, match="positive"):
        decode_activation(struct.pack("<I", len(head)) + head)
    with pytest.raises(ModelError, match="does not fit"):
        decode_activation(struct.pack("<I", 10**6) + b"{}")
    with pytest.raises(ModelError, match="not valid"):
        decode_activation(struct.pack("<I", 2) + b"[]")


def test_node_caps_malloc_arenas_on_glibc():
    """A node caps glibc's malloc arenas before its threads start (resident memory grew about
    twice as much under load without it)."""
    from shardnet.process import limit_malloc_arenas

    assert limit_malloc_arenas() is True


def test_int8_comparison_tells_summation_noise_from_tampering():
    """On an int8 wire a re-run may move a code or two by one step (float summation order); 1%
    noise, garbage and skipped blocks move far more, on small decode-step activations too
    (one 64-wide block, with or without one dominant value)."""
    import torch

    from node.misbehave import corrupt_activation
    from node.verifier import int8_departure
    from shardnet.model.quant import decode_activation, encode_activation

    def wire(t):
        return decode_activation(encode_activation(t, "int8"))

    for seed in range(40):
        torch.manual_seed(seed)  # corrupt_activation draws its noise from the global generator
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(1, 1, 64, generator=g)
        if seed % 2:
            x[0, 0, seed % 64] = 40.0  # a dominant value, as residual streams have
        mine = wire(x)
        assert int8_departure(wire(x * (1 + 1e-6)), mine) == ""  # summation-order noise
        step = mine.abs().max() / 127
        flipped = mine.clone()
        flipped[0, 0, 5] += step
        flipped[0, 0, 9] -= step
        assert int8_departure(flipped, mine) == ""  # two codes one step off: honest
        for mode in ("perturb", "garbage"):
            assert int8_departure(wire(corrupt_activation(mode, x, x)), mine) != "", (seed, mode)
        assert int8_departure(wire(torch.randn(1, 1, 64, generator=g)), mine) != ""  # a skipped block


def test_receipts_asked_for_early_are_used_only_if_they_chain_up_over_the_same_route():
    """The last stage asks for the earlier stages' receipts as its final step begins. They are
    used when each one's output hash is the next one's input hash, up to what this stage
    received, over the route they were asked of; otherwise they are asked for again."""
    import asyncio

    from node.settlement import Settlement
    from shardnet.protocol import Receipt

    h = [bytes([i]) * 32 for i in range(4)]
    route = [Stage(OTHER, 0, 2, 1), Stage(COORD, 2, 4, 1), Stage(ME, 4, 6, 1)]
    fresh = [(Receipt(h[0], h[1], b"f0"), "Qm0"), (Receipt(h[1], h[2], b"f1"), "Qm1")]
    asked: list[int] = []

    async def collect(run: object, stage: int, sent: asyncio.Event | None = None) -> tuple[Receipt, str]:
        asked.append(stage)
        return fresh[stage]

    settlement = Settlement.__new__(Settlement)
    settlement._collect_receipt = collect  # type: ignore[method-assign]

    def receipts(early: list[tuple[Receipt, str]], asked_of: list[Stage], in_hash: bytes) -> list[tuple[Receipt, str]]:
        async def go() -> list[tuple[Receipt, str]]:
            future = asyncio.get_running_loop().create_future()
            future.set_result(early)
            run = SimpleNamespace(stages=route, in_hash=in_hash, early_receipts=(asked_of, future))
            return await settlement._receipts(run)  # type: ignore[arg-type]

        asked.clear()
        return asyncio.run(go())

    chained = [(Receipt(h[0], h[1], b"e0"), "Qe0"), (Receipt(h[1], h[2], b"e1"), "Qe1")]
    assert receipts(chained, list(route), h[2]) == chained and asked == []
    assert receipts(chained, list(route), h[3]) == fresh and asked == [0, 1]  # stage 1 sent more since
    broken = [(Receipt(h[0], h[3], b"e0"), "Qe0"), chained[1]]
    assert receipts(broken, list(route), h[2]) == fresh and asked == [0, 1]
    rerouted = [route[0], Stage(OTHER, 2, 4, 1), route[2]]
    assert receipts(chained, rerouted, h[2]) == fresh and asked == [0, 1]


def test_joining_the_swarm_dials_every_peer_at_once():
    """A node is ready only once it has joined the swarm: peers that do not answer cost their
    dial timeout once in all, not once each (a restarted node was otherwise long unready)."""
    import asyncio
    import time

    from node.swarm import Swarm

    def connect(addr: str) -> None:
        time.sleep(0.4)  # a dial timing out
        if "dead" in addr:
            raise OSError("no answer")

    ipfs = SimpleNamespace(peer_id=lambda: "Self", swarm_addrs=lambda: ["/ip4/127.0.0.1/tcp/1/p2p/Self"])
    ipfs.peers, ipfs.connect = lambda: [], connect
    peers = [f"/ip4/10.0.0.{i}/tcp/4001/p2p/{'dead' if i % 2 else 'Live'}{i}" for i in range(4)]
    swarm = Swarm(ipfs, ME, Ledger(), peers)  # type: ignore[arg-type]
    started = time.monotonic()
    assert asyncio.run(swarm.join()) == 2  # the two that answered
    assert time.monotonic() - started < 1.2


def test_greedy_sampling_picks_what_torch_argmax_picks():
    """The node's greedy pick (numpy on fp32 logits) is torch's argmax: ties go to the first index,
    NaN counts as the largest, and other dtypes take torch's own path."""
    import torch

    from node.inputs import sample_next
    from shardnet.jobs import JobParams

    greedy = JobParams(kind="generate", max_new_tokens=1)
    gen = torch.Generator().manual_seed(0)
    for seed in range(20):  # a step's logits [1, positions, vocab]: its last position counts
        logits = torch.randn(1, 3, 32000, generator=torch.Generator().manual_seed(seed))
        assert sample_next(logits, greedy, None) == int(logits[0, -1].argmax())
    tied = torch.zeros(1, 1, 100)
    tied[0, 0, [7, 42]] = 3.0
    assert sample_next(tied, greedy, None) == int(tied[0, -1].argmax()) == 7
    nan = torch.randn(1, 1, 100, generator=gen)
    nan[0, 0, [13, 60]] = float("nan")
    assert sample_next(nan, greedy, None) == int(nan[0, -1].argmax()) == 13
    half = torch.randn(1, 2, 100, generator=gen).to(torch.bfloat16)
    assert sample_next(half, greedy, None) == int(half[0, -1].argmax())


def test_a_spans_end_of_generation_tokens_come_from_its_config():
    from node.runs import LoadedSpan

    def span(eos: object) -> LoadedSpan:
        manifest = SimpleNamespace(config=SimpleNamespace(eos_token_id=eos))
        return LoadedSpan(1, manifest, Span(0, 1), None)  # type: ignore[arg-type]

    assert span(2).eos_ids == {2}
    assert span([2, 7]).eos_ids == {2, 7}
    assert span(None).eos_ids == frozenset()


def test_a_hop_is_counted_from_the_senders_compute_end_and_junk_from_a_peer_counts_nothing():
    from node.pipeline import count_hop

    run = SimpleNamespace(hops=(0, 0.0), computed=(100.25, 100.5))
    count_hop(run, {"sent": 100.0, "hops": 0, "hop_ms": 0.0})  # type: ignore[arg-type]
    assert run.hops == (1, 250.0)
    count_hop(run, {"sent": 100.125, "hops": 4, "hop_ms": 10.0})  # the totals come with the frame
    assert run.hops == (5, 135.0)
    junk = [None, "x", {}, {"sent": "100.0"}, {"sent": True}, {"sent": 100}, {"hops": 1, "hop_ms": 1.0}]
    for frame_timing in junk:  # absent (a replay), or not a float sent: nothing counted
        count_hop(run, frame_timing)  # type: ignore[arg-type]
    assert run.hops == (5, 135.0)
    count_hop(run, {"sent": 100.0, "hops": "many", "hop_ms": None})  # junk totals: counted afresh
    assert run.hops == (1, 250.0)
    fresh = SimpleNamespace(hops=(0, 0.0), computed=(0.0, 0.0))  # no model call here yet
    count_hop(fresh, {"sent": 1.0, "hops": 0, "hop_ms": 0.0})  # type: ignore[arg-type]
    assert fresh.hops == (0, 0.0)
