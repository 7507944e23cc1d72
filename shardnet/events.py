"""Contract events: the one way node, coordinator, client, auditor and indexer read them.

- `EventDecoder` decodes logs of the project contracts straight with eth_abi.
- `EventReader.fetch` reads a block range (raw `eth_getLogs`), decodes it and puts it in chain
  order; `EventReader.poll` follows from a saved height: it remembers the last block it fully
  handed over (a small JSON file), so a restarted process catches up from there and never hands
  over one event twice (the height is saved only after the caller took every event of a range).
- `Listener` is the long-lived async face: catch up to the head, then a websocket log
  subscription (opened before the catch-up, so nothing falls between the two), with HTTP
  polling when the websocket fails. Every event is yielded once, in (block, log index) order.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.abi import collapse_if_tuple, event_abi_to_log_topic
from web3 import Web3

from shardnet.chain import Chain, connect_ws
from shardnet.errors import ChainUnavailable

log = logging.getLogger("shardnet.events")
Topics = Sequence[str | None]


@dataclass(frozen=True)
class Event:
    name: str
    args: dict[str, Any]
    contract: str  # address that emitted it
    block_number: int
    tx_hash: str  # 0x-prefixed
    log_index: int

    @property
    def key(self) -> tuple[int, int]:
        """Position in the chain, unique per event."""
        return (self.block_number, self.log_index)


def _hex_bytes(value: Any) -> bytes:
    return bytes(value) if not isinstance(value, str) else bytes.fromhex(value.removeprefix("0x"))


def _int(value: Any) -> int:
    return value if isinstance(value, int) else int(value, 16)


def _normalize(abi_input: dict[str, Any], value: Any) -> Any:
    """eth_abi's plain values in web3's shape: checksummed addresses, structs as dicts."""
    kind = abi_input["type"]
    if kind.endswith("]"):  # arrays (our events only use one dimension)
        element = {**abi_input, "type": kind[: kind.rindex("[")]}
        return [_normalize(element, v) for v in value]
    if kind == "tuple":
        return {c["name"]: _normalize(c, v) for c, v in zip(abi_input["components"], value, strict=True)}
    if kind == "address":
        return Web3.to_checksum_address(value)
    return value


class EventDecoder:
    """Decodes logs of the project contracts by topic0, straight with eth_abi (several times
    faster than web3's generic event decoding, which matters when indexing long histories).
    Takes logs as web3 formats them or as the raw JSON-RPC dicts (hex strings)."""

    def __init__(self, abis: list[dict[str, Any]]):
        self._by_topic: dict[bytes, tuple[Any, ...]] = {}
        for e in abis:
            if e.get("type") != "event":
                continue
            indexed = [i for i in e["inputs"] if i["indexed"]]
            plain = [i for i in e["inputs"] if not i["indexed"]]
            self._by_topic[event_abi_to_log_topic(e)] = (  # type: ignore[arg-type]
                e["name"],
                indexed,
                [collapse_if_tuple(i) for i in indexed],
                plain,
                [collapse_if_tuple(i) for i in plain],
                [i["name"] for i in e["inputs"]],
            )

    def decode(self, log: Any) -> Event | None:
        topics = log.get("topics") or []
        if not topics:
            return None
        spec = self._by_topic.get(_hex_bytes(topics[0]))
        if spec is None:
            return None
        name, indexed, indexed_types, plain, plain_types, order = spec
        if len(topics) - 1 != len(indexed):
            return None  # same signature, different indexing: not one of ours
        args: dict[str, Any] = {}
        for abi_input, kind, topic in zip(indexed, indexed_types, topics[1:], strict=True):
            args[abi_input["name"]] = _normalize(abi_input, abi_decode([kind], _hex_bytes(topic))[0])
        for abi_input, value in zip(plain, abi_decode(plain_types, _hex_bytes(log["data"])), strict=True):
            args[abi_input["name"]] = _normalize(abi_input, value)
        return Event(
            name,
            {k: args[k] for k in order},
            Web3.to_checksum_address(log["address"]),
            _int(log["blockNumber"]),
            "0x" + _hex_bytes(log["transactionHash"]).hex(),
            _int(log["logIndex"]),
        )


class EventReader:
    """Reads the project contracts' events (`addresses`, default: the deployment's three) in
    chain order: a block range at a time (`fetch`), or from a saved height (`poll`)."""

    def __init__(
        self,
        chain: Chain,
        addresses: Sequence[str] | None = None,
        state_path: Path | None = None,
        start_block: int | None = None,
        batch_blocks: int = 2_000,
    ):
        if addresses is None:
            if chain.deployment is None:
                raise ChainUnavailable("no deployment loaded: pass the contract addresses to read events from")
            addresses = chain.deployment.addresses()
        self.chain = chain
        self.addresses = [Web3.to_checksum_address(a) for a in addresses]
        self.state_path = state_path
        self.batch_blocks = batch_blocks
        self.decoder = EventDecoder(chain.abis)
        default_start = (
            start_block if start_block is not None else (chain.deployment.deploy_block if chain.deployment else 0)
        )
        self.start_block = default_start  # the first block this reader's deployment has events in
        self.next_block = self._load_height(default_start)

    def head(self) -> int:
        return int(self.chain.w3.eth.block_number)

    def fetch(self, from_block: int, to_block: int, topics: Topics | None = None) -> list[Event]:
        """Every event in [from_block, to_block], decoded, in chain order. The raw JSON-RPC reply
        is decoded straight (web3's result formatting costs more than decoding on long
        histories). Raises ValueError when the RPC answers with an error."""
        if from_block > to_block:
            return []
        query: dict[str, Any] = {"address": self.addresses, "fromBlock": hex(from_block), "toBlock": hex(to_block)}
        if topics is not None:
            query["topics"] = list(topics)
        reply = self.chain.w3.provider.make_request("eth_getLogs", [query])  # type: ignore[arg-type]
        if "error" in reply:
            raise ValueError(f"eth_getLogs failed: {reply['error']}")
        return sorted((e for e in map(self.decoder.decode, reply["result"]) if e is not None), key=lambda e: e.key)

    # ------------------------------------------------------------------ from a saved height
    def _load_height(self, default: int) -> int:
        if self.state_path and self.state_path.exists():
            return int(json.loads(self.state_path.read_text())["next_block"])
        return default

    def _save_height(self) -> None:
        if self.state_path:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps({"next_block": self.next_block}))
            tmp.replace(self.state_path)

    def poll(self) -> Iterator[Event]:
        """Yield every new event up to the chain head, in chain order. The saved height moves
        past a block range once the caller has consumed all of its events."""
        head = self.head()
        while self.next_block <= head:
            to_block = min(head, self.next_block + self.batch_blocks - 1)
            yield from self.fetch(self.next_block, to_block)
            self.next_block = to_block + 1
            self._save_height()


class Listener:
    """Contract events in chain order, from a given position, forever (node and coordinator)."""

    def __init__(self, reader: EventReader, ws_url: str | None, poll_interval_s: float = 0.2):
        self.reader = reader
        self.ws_url = ws_url
        self.poll_interval_s = poll_interval_s
        self.last_key: tuple[int, int] = (-1, -1)
        self.mode = "starting"

    def _fresh(self, event: Event) -> bool:
        if event.key <= self.last_key:
            return False
        self.last_key = event.key
        return True

    async def catch_up(self, from_block: int) -> AsyncIterator[Event]:
        head = await asyncio.to_thread(self.reader.head)
        for event in await asyncio.to_thread(self.reader.fetch, from_block, head):
            if self._fresh(event):
                yield event

    async def stream(self, from_block: int) -> AsyncIterator[Event]:
        while True:
            if self.ws_url:
                try:
                    async for event in self._websocket(self.ws_url, from_block):
                        yield event
                except Exception as exc:  # noqa: BLE001 - any transport failure: fall back to polling
                    log.warning("websocket subscription failed (%s); polling over HTTP", exc)
            from_block = self.last_key[0] + 1 if self.last_key[0] >= 0 else from_block
            async for event in self._poll(from_block, rounds=50 if self.ws_url else None):
                yield event
            from_block = self.last_key[0] + 1 if self.last_key[0] >= 0 else from_block

    async def _websocket(self, ws_url: str, from_block: int) -> AsyncIterator[Event]:
        async with connect_ws(ws_url) as w3:
            await w3.eth.subscribe("logs", {"address": self.reader.addresses})
            self.mode = "websocket"
            async for event in self.catch_up(from_block):
                yield event
            async for message in w3.socket.process_subscriptions():
                decoded = self.reader.decoder.decode(dict(message["result"]))
                if decoded is not None and self._fresh(decoded):
                    yield decoded

    async def _poll(self, from_block: int, rounds: int | None) -> AsyncIterator[Event]:
        self.mode = "polling"
        done, down_since = 0, None
        while rounds is None or done < rounds:
            try:
                async for event in self.catch_up(from_block):
                    yield event
            except Exception as exc:  # noqa: BLE001 - the chain is down or restarting: wait for it
                if down_since is None:
                    down_since = time.monotonic()
                    log.warning("the chain does not answer (%s); retrying until it does", exc)
                self.mode = "chain unreachable"
                await asyncio.sleep(min(2.0, self.poll_interval_s * 5))
                continue
            if down_since is not None:
                log.info("the chain answers again after %.1f s", time.monotonic() - down_since)
                down_since, self.mode = None, "polling"
            from_block = max(from_block, self.last_key[0] + 1)
            done += 1
            await asyncio.sleep(self.poll_interval_s)
