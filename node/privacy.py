"""Private jobs at a node (see shardnet.sealing): the job keys clients hand this node for jobs
it serves, kept across restarts until the audit window is long past; the key given, sealed, to a
committee member checking one of the job's stages; and, as a member, the key asked of the
job's route."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING

from eth_account.signers.local import LocalAccount

from shardnet.errors import PeerError
from shardnet.ledger import Ledger
from shardnet.sealing import SealError, key_context, open_key, seal_key

if TYPE_CHECKING:
    from node.link_crypto import LinkKey
    from node.peers import PeerClient
    from node.state import AgentState

log = logging.getLogger("shardnet.node.privacy")


class JobKeys:
    def __init__(
        self,
        account: LocalAccount,
        link_key: LinkKey,
        chain_id: int,
        market: str,
        ledger: Ledger,
        state: AgentState,
        peers: PeerClient,
    ):
        self.address = account.address
        self.link_key = link_key
        self.chain_id = chain_id
        self.market = market
        self.ledger = ledger
        self.state = state
        self.peers = peers
        self._arrived: dict[int, asyncio.Event] = {}

    def context(self, job_id: int) -> str:
        return key_context(job_id, self.chain_id, self.market)

    def get(self, job_id: int) -> bytes | None:
        saved = self.state.job_keys.get(job_id)
        return bytes.fromhex(saved) if saved else None

    async def wait_for(self, job_id: int, timeout_s: float) -> bytes | None:
        """The job's key once its client has handed it over, or None after `timeout_s`."""
        if (key := self.get(job_id)) is not None:
            return key
        arrived = self._arrived.setdefault(job_id, asyncio.Event())
        try:
            await asyncio.wait_for(arrived.wait(), timeout_s)
        except TimeoutError:
            return None
        return self.get(job_id)

    def accept(self, job_id: int, sender: str, body: bytes) -> str | None:
        """The client hands over its job's key, sealed to this node: None when kept, else why not."""
        job = self.ledger.jobs.get(job_id)
        if job is None or not job.route:
            return f"job {job_id} has no route on-chain"
        if sender != job.client:
            return "only the client that posted the job hands over its key"
        if self.address not in {s.node for s in job.route}:
            return f"this node is not on the route of job {job_id}"
        try:
            sealed = bytes.fromhex(str(json.loads(body)["sealed"]).removeprefix("0x"))
            key = open_key(self.link_key.private, sealed, self.context(job_id))
        except (ValueError, KeyError, TypeError, SealError) as exc:
            return f'body must be JSON {{"sealed": "<job key sealed to this node\'s dataKey>"}}: {exc}'
        self.state.keep_job_key(job_id, key)
        if (arrived := self._arrived.pop(job_id, None)) is not None:
            arrived.set()
        return None

    def for_member(self, job_id: int, sender: str, body: bytes) -> tuple[dict[str, str] | None, str]:
        """The job's key sealed to `sender`, if it sits on a committee checking this job."""
        try:
            audit_id = int(json.loads(body)["audit"])
        except (ValueError, KeyError, TypeError):
            return None, 'body must be JSON {"audit": <audit id>}'
        audit = self.ledger.audits.get(audit_id)
        if audit is None or audit.job_id != job_id or sender not in audit.members:
            return None, f"{sender} is not a member of an audit {audit_id} of job {job_id}"
        key, member_key = self.get(job_id), self.ledger.data_keys.get(sender, b"")
        if key is None:
            return None, f"this node does not hold the key of job {job_id}"
        try:
            return {"sealed": seal_key(member_key, key, self.context(job_id)).hex()}, ""
        except SealError as exc:
            return None, str(exc)

    async def fetch_for_audit(self, job_id: int, audit_id: int) -> bytes | None:
        """As a committee member: the job's key from any node of its route that holds it."""
        if (key := self.get(job_id)) is not None:
            return key
        job = self.ledger.jobs[job_id]
        body = json.dumps({"audit": audit_id}).encode()
        for node in dict.fromkeys(s.node for s in job.route):
            endpoint = self.ledger.endpoints.get(node)
            if endpoint is None:
                continue
            try:
                reply = await self.peers.post(endpoint, f"/v1/jobs/{job_id}/key-for-audit", body)
                key = open_key(self.link_key.private, bytes.fromhex(reply.json()["sealed"]), self.context(job_id))
            except (PeerError, SealError, ValueError, KeyError, TypeError) as exc:
                log.warning("job %d: no key from %s for audit %d: %s", job_id, node, audit_id, exc)
                continue
            self.state.keep_job_key(job_id, key)
            return key
        return None
