"""Listener: contract events in chain order, from a given position, forever.

Catch-up reads `eth_getLogs` up to the head; new events then arrive over a websocket log
subscription (opened before the catch-up, so nothing falls between the two). If the
websocket fails, HTTP polling takes over. Every event is yielded once, in (block, log
index) order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from web3 import Web3

from shardnet.chain import Chain, connect_ws
from shardnet.events import Event, EventDecoder

log = logging.getLogger("shardnet.listener")


class Listener:
    def __init__(self, chain: Chain, addresses: list[str], ws_url: str | None, poll_interval_s: float = 0.2):
        self.chain = chain
        self.addresses = [Web3.to_checksum_address(a) for a in addresses]
        self.ws_url = ws_url
        self.poll_interval_s = poll_interval_s
        self.decoder = EventDecoder(chain.abis)
        self.last_key: tuple[int, int] = (-1, -1)
        self.mode = "starting"

    def _logs(self, from_block: int, to_block: int) -> list[Event]:
        if from_block > to_block:
            return []
        logs = self.chain.w3.eth.get_logs({"address": self.addresses, "fromBlock": from_block, "toBlock": to_block})
        events = [self.decoder.decode(lg) for lg in logs]
        return sorted((e for e in events if e is not None), key=lambda e: e.key)

    def _fresh(self, event: Event) -> bool:
        if event.key <= self.last_key:
            return False
        self.last_key = event.key
        return True

    async def catch_up(self, from_block: int) -> AsyncIterator[Event]:
        head = await asyncio.to_thread(lambda: self.chain.w3.eth.block_number)
        for event in await asyncio.to_thread(self._logs, from_block, head):
            if self._fresh(event):
                yield event

    async def stream(self, from_block: int) -> AsyncIterator[Event]:
        while True:
            if self.ws_url:
                try:
                    async for event in self._websocket(from_block):
                        yield event
                except Exception as exc:  # noqa: BLE001 - any transport failure: fall back to polling
                    log.warning("websocket subscription failed (%s); polling over HTTP", exc)
            from_block = self.last_key[0] + 1 if self.last_key[0] >= 0 else from_block
            async for event in self._poll(from_block, rounds=50 if self.ws_url else None):
                yield event
            from_block = self.last_key[0] + 1 if self.last_key[0] >= 0 else from_block

    async def _websocket(self, from_block: int) -> AsyncIterator[Event]:
        async with connect_ws(self.ws_url) as w3:
            await w3.eth.subscribe("logs", {"address": self.addresses})
            self.mode = "websocket"
            async for event in self.catch_up(from_block):
                yield event
            async for message in w3.socket.process_subscriptions():
                event = self.decoder.decode(dict(message["result"]))
                if event is not None and self._fresh(event):
                    yield event

    async def _poll(self, from_block: int, rounds: int | None) -> AsyncIterator[Event]:
        self.mode = "polling"
        done = 0
        while rounds is None or done < rounds:
            async for event in self.catch_up(from_block):
                yield event
            from_block = max(from_block, self.last_key[0] + 1)
            done += 1
            await asyncio.sleep(self.poll_interval_s)
