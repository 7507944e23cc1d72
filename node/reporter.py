"""Reporter: this node's transactions (simulated first, then sent), off the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import partial
from typing import Any

from eth_account.signers.local import LocalAccount

from shardnet.bindings import Contracts, send_logged
from shardnet.protocol import Hardware, Receipt, Stage

log = logging.getLogger("shardnet.node.reporter")
CLAIM_GAS = 250_000  # claimDelivery: one receipt check and one storage write, with room to spare


class Reporter:
    def __init__(self, contracts: Contracts, account: LocalAccount):
        self.c = contracts
        self.account = account

    async def _do(self, what: str, fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any] | None:
        return await send_logged(log, what, fn, *args, account=self.account)

    async def ensure_registered(self, endpoint: str, hardware: Hardware, data_key: bytes, stake: int) -> bool:
        """Register this node, or bring its profile (endpoint, hardware, link key) up to date."""
        info = await asyncio.to_thread(self.c.nodes.node, self.account.address)
        if info.registered_at:
            if (info.endpoint, info.hardware, info.data_key) != (endpoint, hardware, data_key):
                await self._do("updateProfile", self.c.nodes.update_profile, endpoint, hardware, data_key)
            return False
        await self._do("register", self.c.nodes.register, endpoint, hardware, data_key, stake)
        return True

    async def confirm_shard(self, model_id: int) -> bool:
        return await self._do(f"confirmShard({model_id})", self.c.models.confirm_shard, model_id) is not None

    async def submit_result(
        self, job_id: int, coordinator: str, stages: list[Stage], output_cid: str, receipts: list[Receipt]
    ) -> bool:
        return (
            await self._do(
                f"submitResult({job_id})",
                self.c.market.submit_result,
                job_id,
                coordinator,
                stages,
                output_cid,
                receipts,
            )
            is not None
        )

    async def contest_replacement(self, job_id: int, stage: int, old_stage: Stage, receipt: Receipt) -> bool:
        what = f"contestReplacement({job_id}, stage {stage})"
        return await self._do(what, self.c.nodes.contest_replacement, job_id, stage, old_stage, receipt) is not None

    async def claim_delivery(
        self, job_id: int, coordinator: str, stages: list[Stage], stage: int, receipt: Receipt
    ) -> bool:
        return (
            await self._do(
                f"claimDelivery({job_id}, stage {stage})",
                partial(self.c.market.claim_delivery, gas=CLAIM_GAS),  # sent unsimulated: see the binding
                job_id,
                coordinator,
                stages,
                stage,
                receipt,
            )
            is not None
        )

    async def abort_job(self, job_id: int, coordinator: str, stages: list[Stage], reason: str) -> bool:
        return (
            await self._do(f"abortJob({job_id})", self.c.market.abort_job, job_id, coordinator, stages, reason[:300])
            is not None
        )
