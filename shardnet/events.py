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

from eth_abi import decode as abi_decode
from eth_utils import event_abi_to_log_topic
from eth_utils.abi import collapse_if_tuple
from web3 import Web3

from shardnet.chain import Chain


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


def _hex_bytes(value) -> bytes:
    return bytes(value) if not isinstance(value, str) else bytes.fromhex(value.removeprefix("0x"))


def _int(value) -> int:
    return value if isinstance(value, int) else int(value, 16)


def _normalize(abi_input: dict, value):
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

    def __init__(self, abis: list[dict]):
        self._by_topic = {}
        for e in abis:
            if e.get("type") != "event":
                continue
            indexed = [i for i in e["inputs"] if i["indexed"]]
            plain = [i for i in e["inputs"] if not i["indexed"]]
            self._by_topic[event_abi_to_log_topic(e)] = (
                e["name"],
                indexed,
                [collapse_if_tuple(i) for i in indexed],
                plain,
                [collapse_if_tuple(i) for i in plain],
                [i["name"] for i in e["inputs"]],
            )

    def decode(self, log: dict) -> Event | None:
        topics = log.get("topics") or []
        if not topics:
            return None
        spec = self._by_topic.get(_hex_bytes(topics[0]))
        if spec is None:
            return None
        name, indexed, indexed_types, plain, plain_types, order = spec
        if len(topics) - 1 != len(indexed):
            return None  # same signature, different indexing: not one of ours
        args = {}
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


class EventFollower:
    """Polls `eth_getLogs` for the given contracts from a saved height."""

    def __init__(
        self,
        chain: Chain,
        addresses: list[str],
        state_path: Path | None = None,
        start_block: int | None = None,
        batch_blocks: int = 2_000,
    ):
        self.chain = chain
        self.addresses = [Web3.to_checksum_address(a) for a in addresses]
        self.state_path = state_path
        self.batch_blocks = batch_blocks
        self.decoder = EventDecoder(chain.abis)
        default_start = (
            start_block if start_block is not None else (chain.deployment.deploy_block if chain.deployment else 0)
        )
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
                {"address": self.addresses, "fromBlock": self.next_block, "toBlock": to_block}
            )
            for log in sorted(logs, key=lambda lg: (lg["blockNumber"], lg["logIndex"])):
                event = self.decoder.decode(log)
                if event is not None:
                    yield event
            self.next_block = to_block + 1
            self._save_height()
