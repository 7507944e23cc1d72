"""ModelRegistry: models, shard assignments and their confirmation."""

from __future__ import annotations

from typing import Any

from eth_account.signers.local import LocalAccount

from shardnet.bindings.base import Binding
from shardnet.protocol import (
    Assignment,
    Model,
)


class ModelRegistry(Binding):
    name = "ModelRegistry"

    def register_model(
        self,
        name: str,
        manifest_cid: str,
        block_count: int,
        blocks_root: bytes,
        price_per_block: int,
        account: LocalAccount | None = None,
    ) -> int:
        receipt = self._tx(
            self.contract.functions.registerModel(name, manifest_cid, block_count, blocks_root, price_per_block),
            0,
            account,
        )
        return int(next(e.args["modelId"] for e in self.events_in(receipt) if e.name == "ModelRegistered"))

    def deprecate_model(self, model_id: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.deprecateModel(model_id), 0, account)

    def assign_shard(
        self, model_id: int, node: str, start: int, end: int, account: LocalAccount | None = None
    ) -> dict[str, Any]:
        return self._tx(self.contract.functions.assignShard(model_id, node, start, end), 0, account)

    def confirm_shard(self, model_id: int, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.confirmShard(model_id), 0, account)

    def release_shard(self, model_id: int, node: str, account: LocalAccount | None = None) -> dict[str, Any]:
        return self._tx(self.contract.functions.releaseShard(model_id, node), 0, account)

    def grant_coordinator(self, who: str, account: LocalAccount | None = None) -> dict[str, Any]:
        return self.grant_role("COORDINATOR_ROLE", who, account)

    def grant_publisher(self, who: str, account: LocalAccount | None = None) -> dict[str, Any]:
        """Let `who` register models (admin only)."""
        return self.grant_role("PUBLISHER_ROLE", who, account)

    # views
    def model(self, model_id: int) -> Model:
        m = self._call(self.contract.functions.getModel(model_id))
        return Model(model_id, m[0], m[1], m[2], m[3], bytes(m[4]), m[5], m[6])

    def model_count(self) -> int:
        return int(self._call(self.contract.functions.modelCount()))

    def assignment(self, model_id: int, node: str) -> Assignment:
        return Assignment(*self._call(self.contract.functions.assignmentOf(model_id, node)))

    def nodes_for_block(self, model_id: int, block: int) -> list[str]:
        return list(self._call(self.contract.functions.nodesForBlock(model_id, block)))

    def assigned_nodes(self, model_id: int) -> list[str]:
        return list(self._call(self.contract.functions.assignedNodes(model_id)))
