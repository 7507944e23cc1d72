"""What a node remembers across restarts (node.state): its position in the chain's events, the
jobs it settled, and when it writes them."""

from __future__ import annotations

from pathlib import Path

from node.state import AgentState
from shardnet.deployment import ContractRecord, Deployment


def _deployment(market: str = "0x" + "ab" * 20) -> Deployment:
    return Deployment(31337, "http://x", "ws://x", "http://ipfs", 5, "solc", {"JobMarket": ContractRecord(market, "h")})


def test_state_survives_a_restart_and_refuses_another_deployment(tmp_path: Path):
    state = AgentState(tmp_path, _deployment())
    assert not state.acted_on((3, 0))
    state.advance((3, 1))
    state.settled(4, "submitted")
    again = AgentState(tmp_path, _deployment())
    assert again.acted_on((3, 1)) and again.acted_on((2, 9)) and not again.acted_on((3, 2))
    assert again.submitted == [4]
    other = AgentState(tmp_path, _deployment(market="0x" + "cd" * 20))
    assert other.last == (-1, -1) and other.submitted == []


def test_on_the_event_loop_an_acted_on_position_is_saved_once_the_work_it_started_had_its_turn(tmp_path: Path):
    """A job routed here starts before the node writes its state file (milliseconds): the save
    comes on the loop's next turn, once for several events in a row, with the last position."""
    import asyncio

    state = AgentState(tmp_path, _deployment())
    saved: list[tuple[int, int]] = []
    save = state.save

    def counted() -> None:
        saved.append(state.last)
        save()

    state.save = counted  # type: ignore[method-assign]
    order: list[str] = []

    async def job() -> None:
        order.append(f"job starts, {len(saved)} saves")

    async def scenario() -> None:
        asyncio.ensure_future(job())  # what acting on a JobRouted event spawns
        state.advance((7, 0))
        state.advance((7, 1))
        assert saved == []  # not yet: the job goes first
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    asyncio.run(scenario())
    assert order == ["job starts, 0 saves"] and saved == [(7, 1)]
    assert AgentState(tmp_path, _deployment()).acted_on((7, 1))
