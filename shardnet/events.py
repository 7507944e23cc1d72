"""Follow contract events from a saved block height.

A follower remembers the last block it fully handed over (a small JSON file), so a
restarted process catches up from there and never hands over one event twice: the height is
saved only after the caller has taken every event of that block range.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_utils import event_abi_to_log_topic
from web3 import Web3
from web3._utils.events import get_event_data

from shardnet.chain import Chain


@dataclass(frozen=True)
class Event:
    name: str
    args: dict[str, Any]
    contract: str  # address that emitted it
    block_number: int
    tx_hash: str
    log_index: int

    @property
    def key(self) -> tuple[int, int]:
        """Position in the chain, unique per event."""
        return (self.block_number, self.log_index)


class EventDecoder:
    """Decodes raw logs of the project contracts by topic0."""

    def __init__(self, abis: list[dict]):
        self._by_topic = {event_abi_to_log_topic(e): e for e in abis if e.get("type") == "event"}
        self._codec = Web3().codec

    def decode(self, log: dict) -> Event | None:
        topics = log.get("topics") or []
        if not topics:
            return None
        topic0 = bytes(topics[0]) if not isinstance(topics[0], str) else bytes.fromhex(topics[0].removeprefix("0x"))
        abi = self._by_topic.get(topic0)
        if abi is None:
            return None
        data = get_event_data(self._codec, abi, log)
        tx_hash = data["transactionHash"]
        return Event(abi["name"], dict(data["args"]), data["address"], data["blockNumber"],
                     tx_hash.hex() if isinstance(tx_hash, bytes) else str(tx_hash), data["logIndex"])


class EventFollower:
    """Polls `eth_getLogs` for the given contracts from a saved height."""

    def __init__(self, chain: Chain, addresses: list[str], state_path: Path | None = None,
                 start_block: int | None = None, batch_blocks: int = 2_000):
        self.chain = chain
        self.addresses = [Web3.to_checksum_address(a) for a in addresses]
        self.state_path = state_path
        self.batch_blocks = batch_blocks
        self.decoder = EventDecoder(chain.abis)
        default_start = start_block if start_block is not None else (
            chain.deployment.deploy_block if chain.deployment else 0)
        self.next_block = self._load_height(default_start)

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
        head = self.chain.w3.eth.block_number
        while self.next_block <= head:
            to_block = min(head, self.next_block + self.batch_blocks - 1)
            logs = self.chain.w3.eth.get_logs(
                {"address": self.addresses, "fromBlock": self.next_block, "toBlock": to_block})
            for log in sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
                event = self.decoder.decode(log)
                if event is not None:
                    yield event
            self.next_block = to_block + 1
            self._save_height()
