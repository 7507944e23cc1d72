"""Typed Python bindings for the contracts, one module per contract. Every write simulates
first (a revert raises the contract's named error from `shardnet.contract_errors`), then signs
and sends."""

from __future__ import annotations

from eth_account.signers.local import LocalAccount
from web3.types import BlockIdentifier

from shardnet.bindings.base import ZERO_ADDRESS, read_waiting, send_logged
from shardnet.bindings.market import JobMarket
from shardnet.bindings.models import ModelRegistry
from shardnet.bindings.nodes import NodeRegistry
from shardnet.bindings.verifier import Verifier
from shardnet.chain import Chain
from shardnet.protocol import Account

__all__ = [
    "ZERO_ADDRESS",
    "Contracts",
    "JobMarket",
    "ModelRegistry",
    "NodeRegistry",
    "Verifier",
    "read_waiting",
    "send_logged",
]


class Contracts:
    """The bindings of one deployment. Reads are of the latest state, or of the state after
    `block` (an audit compares events up to a block with the state at that same block)."""

    def __init__(self, chain: Chain, block: BlockIdentifier = "latest"):
        self.chain = chain
        self.block = block
        self.nodes = NodeRegistry(chain, block=block)
        self.models = ModelRegistry(chain, block=block)
        self.market = JobMarket(chain, block=block)
        self.verifier = Verifier(chain, block=block)

    def withdraw_all(self, who: str, account: LocalAccount | None = None) -> dict[str, int]:
        """Send `who` (signing as `account`) everything withdrawable: from the market (refunds, and
        fees past their audit window) and from the verifier (committee pay, bonds, rewards).
        Returns the wei sent, by contract ("market", "verifier")."""
        sent: dict[str, int] = {}
        if (credit := self.market.balance(who)[0]) != 0:
            self.market.withdraw(account=account)
            sent["market"] = credit
        if (credit := self.verifier.credit(who)) != 0:
            self.verifier.withdraw(account=account)
            sent["verifier"] = credit
        return sent

    def account(self, who: str) -> Account:
        """What the chain holds for an account: its balance in the market and, for a node, its
        failed stages in the node registry."""
        withdrawable, pending, until = self.market.balance(who)
        return Account(withdrawable, pending, until, self.nodes.failures(who))
