"""Verifier: audits, committees, votes, challenges, slashes and committee pay."""

from __future__ import annotations

from typing import Any

from eth_account.signers.local import LocalAccount

from shardnet.bindings.base import Binding
from shardnet.protocol import (
    Audit,
    Vote,
)


class Verifier(Binding):
    name = "Verifier"

    def commit(self, audit_id: int, commitment: bytes, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.commit(audit_id, commitment), 0, account)

    def reveal(
        self,
        audit_id: int,
        vote: Vote,
        salt: bytes,
        account: LocalAccount | None = None,
        gas: int | None = None,
    ) -> dict[str, Any]:
        """With `gas`, sent without simulating (the reveal may open by the chain's clock)."""
        return self._tx(self.contract.functions.reveal(audit_id, int(vote), salt), 0, account, gas)

    def resolve(self, audit_id: int, account: LocalAccount | None = None, gas: int | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.resolve(audit_id), 0, account, gas)

    def withdraw(self, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.withdraw(), 0, account)

    def set_penalties(
        self,
        min_slash: int,
        slash_multiple: int,
        member_penalty: int,
        challenge_bond: int,
        account: LocalAccount | None = None,
    ) -> dict[str, Any]:
        fn = self.contract.functions.setPenalties((min_slash, slash_multiple, member_penalty, challenge_bond))
        return self._tx(fn, 0, account)

    # views
    def audit(self, audit_id: int) -> Audit:
        a = self._call(self.contract.functions.getAudit(audit_id))
        c = a[0]
        return Audit(audit_id, c[0], c[1], c[2], c[3], c[4], c[5], c[6], *a[1:])

    def audit_count(self) -> int:
        return int(self._call(self.contract.functions.auditCount()))

    def members(self, audit_id: int) -> list[str]:
        return list(self._call(self.contract.functions.membersOf(audit_id)))

    def ballot(self, audit_id: int, member: str) -> tuple[bytes, Vote]:
        commitment, vote = self._call(self.contract.functions.ballotOf(audit_id, member))
        return bytes(commitment), Vote(vote)

    def commitment(self, audit_id: int, member: str, vote: Vote, salt: bytes) -> bytes:
        return bytes(self._call(self.contract.functions.commitmentOf(audit_id, member, int(vote), salt)))

    def credit(self, who: str) -> int:
        return int(self._call(self.contract.functions.credit(who)))

    def penalties(self) -> tuple[int, int, int, int]:
        """(minSlash, slashMultiple, memberPenalty, challengeBond)."""
        p = self._call(self.contract.functions.penalties())
        return int(p[0]), int(p[1]), int(p[2]), int(p[3])

    def challenge_bond(self) -> int:
        return int(self._call(self.contract.functions.challengeBond()))
