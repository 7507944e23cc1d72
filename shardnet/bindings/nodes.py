"""NodeRegistry: staking, profiles, unstaking, failures and slashes; coordinators' bonds and the
contests of nodes a reroute replaced."""

from __future__ import annotations

from typing import Any

from eth_account.signers.local import LocalAccount

from shardnet.bindings.base import ZERO_ADDRESS, Binding
from shardnet.protocol import (
    Hardware,
    NodeInfo,
    Receipt,
    Stage,
)


class NodeRegistry(Binding):
    name = "NodeRegistry"

    def register(
        self, endpoint: str, hardware: Hardware, data_key: bytes, stake: int, account: LocalAccount | None = None
    ) -> dict[str, Any]:
        return self._tx(self.contract.functions.register(endpoint, tuple(hardware), data_key), stake, account)

    def add_stake(self, amount: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.addStake(), amount, account)

    def update_profile(
        self, endpoint: str, hardware: Hardware, data_key: bytes, account: LocalAccount | None = None
    ) -> dict[str, Any]:
        return self._tx(self.contract.functions.updateProfile(endpoint, tuple(hardware), data_key), 0, account)

    def request_unstake(self, amount: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.requestUnstake(amount), 0, account)

    def withdraw_unstaked(self, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.withdrawUnstaked(), 0, account)

    def slash(self, node: str, amount: int, reason: str, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.slash(node, amount, reason), 0, account)

    def grant_slasher(self, who: str, account: LocalAccount | None = None) -> dict[str, Any]:
        return self.grant_role("SLASHER_ROLE", who, account)

    def set_parameters(
        self, min_stake: int, cooldown_s: int, treasury: str, account: LocalAccount | None = None
    ) -> dict[str, Any]:
        return self._tx(self.contract.functions.setParameters(min_stake, cooldown_s, treasury), 0, account)

    def set_min_coordinator_bond(self, amount: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.setMinCoordinatorBond(amount), 0, account)

    # coordinators
    def bond_coordinator(self, amount: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.bondCoordinator(), amount, account)

    def request_unbond(self, amount: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.requestUnbond(amount), 0, account)

    def withdraw_unbonded(self, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.withdrawUnbonded(), 0, account)

    def contest_replacement(
        self, job_id: int, stage: int, old_stage: Stage, receipt: Receipt, account: LocalAccount | None = None
    ) -> dict[str, Any]:
        """As the node a reroute replaced at `stage` (`old_stage` of the old route): prove it is
        live with its receipt for that stage, which strikes off its failure and fines the coordinator."""
        fn = self.contract.functions.contestReplacement(job_id, stage, tuple(old_stage), tuple(receipt))
        return self._tx(fn, 0, account)

    # views
    def min_coordinator_bond(self) -> int:
        return int(self._call(self.contract.functions.minCoordinatorBond()))

    def coordinator_bond(self, coordinator: str) -> tuple[int, int, int]:
        """(bond, pending unbond, unlock time) of `coordinator`."""
        b = self._call(self.contract.functions.coordinatorBondOf(coordinator))
        return int(b[0]), int(b[1]), int(b[2])

    def contestable_until(self, job_id: int, node: str) -> int:
        """Until when `node` may contest a reroute that replaced it on `job_id` (0: nothing to contest)."""
        r = self._call(self.contract.functions.replacementOf(job_id, node))
        return int(r[1]) if str(r[0]).lower() != ZERO_ADDRESS else 0

    def is_active(self, node: str) -> bool:
        return bool(self._call(self.contract.functions.isActive(node)))

    def min_stake(self) -> int:
        return int(self._call(self.contract.functions.minStake()))

    def cooldown_s(self) -> int:
        """How long an unstake request waits (never less than the market's settlement horizon)."""
        return int(self._call(self.contract.functions.cooldown()))

    def node(self, node: str) -> NodeInfo:
        s = self._call(self.contract.functions.getNode(node))
        return NodeInfo(
            node,
            stake=s[0],
            unlock_at=s[1],
            registered_at=s[2],
            pending_unstake=s[3],
            jobs_failed=s[4],
            hardware=Hardware(*s[5]),
            endpoint=s[6],
            data_key=bytes(s[7]),
        )

    def nodes(self) -> list[str]:
        count = self._call(self.contract.functions.nodeCount())
        return [self._call(self.contract.functions.nodeList(i)) for i in range(count)]

    def failures(self, node: str) -> int:
        """Stages the node failed, as the market and the verifier recorded them."""
        return int(self._call(self.contract.functions.failuresOf(node)))
