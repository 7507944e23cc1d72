"""The coordinator's bond: failover (rerouting away from a node) needs the network's minimum,
and a reroute a live node contests is fined from it (contracts/NodeRegistry.sol)."""

from __future__ import annotations

import logging

from eth_account.signers.local import LocalAccount

from shardnet.bindings import Contracts
from shardnet.chain import DEVNET_CHAIN_ID
from shardnet.errors import ConfigError

log = logging.getLogger("shardnet.coordinator")


def ensure_bond(c: Contracts, account: LocalAccount, starting: bool = True) -> None:
    """Bring `account`'s bond up to the network's minimum (checked at start, and again when a
    contested reroute fined it). On the devnet the daemon tops it up by itself; elsewhere bonding
    moves the operator's money, so it asks them to: at start it refuses to run, later it logs what
    to do (the chain refuses its reroutes until then)."""
    need = c.nodes.min_coordinator_bond()
    have, _, _ = c.nodes.coordinator_bond(account.address)
    if have >= need:
        return
    if c.chain.chain_id != DEVNET_CHAIN_ID:
        message = (
            f"coordinator {account.address} has bonded {have} wei and the network requires {need}: "
            f"run 'shardnet coordinator bond {need - have}' with this key"
        )
        if starting:
            raise ConfigError(message)
        log.error("%s; until then the chain refuses this coordinator's reroutes", message)
        return
    c.nodes.bond_coordinator(need - have, account=account)
    log.info("bonded %d wei as coordinator (the devnet's minimum is %d)", need - have, need)
