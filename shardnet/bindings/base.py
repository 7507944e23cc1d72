"""What every contract binding shares: simulate, sign and send a write; read at a block; decode
its events; and `send_logged` for long-lived agents."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from eth_account.signers.local import LocalAccount
from web3.contract.contract import ContractFunction
from web3.types import BlockIdentifier

from shardnet.chain import UNREACHABLE, Chain
from shardnet.contract_errors import ContractRevert
from shardnet.errors import ShardnetError
from shardnet.events import Event, EventDecoder

ZERO_ADDRESS = "0x" + "00" * 20


def as_abi(records: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Typed records (Stage, Receipt) as the plain tuples web3 encodes (it rebuilds tuples by type)."""
    return [tuple(r) for r in records]


class Binding:
    name = ""

    def __init__(self, chain: Chain, address: str | None = None, block: BlockIdentifier = "latest"):
        self.chain = chain
        self.block = block  # every read is of the state after this block
        self.contract = chain.contract(self.name, address)
        self.address = self.contract.address
        self._decoder = EventDecoder(chain.abis)

    def _tx(
        self,
        fn: ContractFunction,
        value: int = 0,
        account: LocalAccount | None = None,
        gas: int | None = None,
        gas_limit: int | None = None,
    ) -> dict[str, Any]:
        return self.chain.transact(fn, value=value, account=account, gas=gas, gas_limit=gas_limit)

    def _call(self, fn: ContractFunction) -> Any:
        return self.chain.call(fn, self.block)

    def grant_role(self, role_name: str, who: str, account: LocalAccount | None = None) -> dict[str, Any]:
        """Grant the contract's `role_name` constant (e.g. COORDINATOR_ROLE) to `who` (admin only)."""
        role = self._call(getattr(self.contract.functions, role_name)())
        return self._tx(self.contract.functions.grantRole(role, who), 0, account)

    def events_in(self, receipt: dict[str, Any]) -> list[Event]:
        """Decoded events of this contract in a transaction receipt."""
        return [e for e in map(self._decoder.decode, receipt["logs"]) if e is not None and e.contract == self.address]


async def send_logged(
    log: logging.Logger, what: str, fn: Callable[..., dict[str, Any]], *args: Any, account: LocalAccount
) -> dict[str, Any] | None:
    """Run a binding's write off the event loop for a long-lived agent: a refusal or a failed
    transaction is logged and returns None, never raised (agents must not crash on them), as is
    a chain that does not answer (restarting, say: the caller tries again later)."""
    try:
        return await asyncio.to_thread(fn, *args, account=account)
    except ContractRevert as exc:
        log.warning("%s refused by the contract: %s", what, exc)
    except ShardnetError as exc:
        log.error("%s failed: %s", what, exc)
    except UNREACHABLE as exc:
        log.warning("%s not sent: the chain does not answer (%s)", what, type(exc).__name__)
    return None


READ_RETRY_FIRST_S = 0.5  # a chain read that failed for want of an answer is asked again after this...
READ_RETRY_MAX_S = 5.0  # ...doubling up to this


async def read_waiting(log: logging.Logger, fn: Callable[..., Any], *args: Any) -> Any:
    """`fn(*args)`, a read from the chain, off the event loop, for a long-lived agent's task:
    while the chain does not answer (restarting, say) it is asked again, backing off from
    READ_RETRY_FIRST_S to READ_RETRY_MAX_S, so the task waits for the chain rather than ends."""
    delay = READ_RETRY_FIRST_S
    while True:
        try:
            return await asyncio.to_thread(fn, *args)
        except UNREACHABLE as exc:
            log.warning("the chain does not answer (%s); asking again in %.1f s", type(exc).__name__, delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, READ_RETRY_MAX_S)
