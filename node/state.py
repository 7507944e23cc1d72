"""What a node remembers across restarts: the position of the last event it acted on, the
jobs it already settled, the committee votes it committed and private jobs' keys, bound to one
deployment (a state folder reused against another chain or redeployed contracts starts over).
The file is readable by its owner only: it holds secrets."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

from shardnet.deployment import Deployment

log = logging.getLogger("shardnet.node.state")
MAX_JOB_KEYS = 10_000
SAVE_EVERY_S = 1.0


class AgentState:
    def __init__(self, state_dir: Path, deployment: Deployment):
        self.path = Path(state_dir) / "state.json"
        self.identity = f"{deployment.chain_id}:{deployment.address('JobMarket')}:{deployment.deploy_block}"
        self._saved_at = 0.0
        self._save_pending = False  # a save is scheduled on the event loop (advance)
        self.last: tuple[int, int] = (-1, -1)  # (block, log index) of the last event acted on
        self.submitted: list[int] = []  # jobs whose result this node submitted
        self.aborted: list[int] = []  # jobs this node aborted
        self.sealed: dict[int, tuple[int, str]] = {}  # audit -> (vote, salt hex) committed, until resolved
        self.job_keys: dict[int, str] = {}  # private job -> its key (hex), for its transcripts and audits
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get("deployment") == self.identity:
                self.last = (int(saved["last"][0]), int(saved["last"][1]))
                self.submitted = list(saved.get("submitted", []))
                self.aborted = list(saved.get("aborted", []))
                self.sealed = {int(a): (int(v), str(salt)) for a, (v, salt) in saved.get("sealed", {}).items()}
                self.job_keys = {int(j): str(k) for j, k in saved.get("job_keys", {}).items()}
            else:
                log.warning("state in %s is for another deployment; starting over", self.path)

    def acted_on(self, key: tuple[int, int]) -> bool:
        """True if the event at `key` was handled before (a restart never acts twice)."""
        return key <= self.last

    def advance(self, key: tuple[int, int], durable: bool = True) -> None:
        """Move past the event at `key`. Past an event acted on the position is saved at once:
        on an event loop, as soon as the work the event started has had its first turn (writing
        the file takes milliseconds, which a job just routed here would otherwise wait for before
        its first stage runs; several events in a row are saved once, with the last position).
        Past an event that asked nothing of this node, at most every SAVE_EVERY_S (a restart
        then reads such events again, and they still ask nothing)."""
        self.last = key
        if durable:
            self._save_soon()
        elif time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self.save()

    def _save_soon(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.save()
            return
        if not self._save_pending:
            self._save_pending = True
            loop.call_soon(self.save)

    def settled(self, job_id: int, how: str) -> None:
        (self.submitted if how == "submitted" else self.aborted).append(job_id)
        self.save()

    def seal(self, audit_id: int, vote: int, salt: bytes) -> None:
        """Remember a committee vote before committing it, so a restart can still reveal it."""
        self.sealed[audit_id] = (vote, salt.hex())
        self.save()

    def unseal(self, audit_id: int) -> None:
        if self.sealed.pop(audit_id, None) is not None:
            self.save()

    def keep_job_key(self, job_id: int, key: bytes) -> None:
        """Keep a private job's key (the newest MAX_JOB_KEYS jobs': far past any audit window)."""
        self.job_keys[job_id] = key.hex()
        for old in sorted(self.job_keys)[: max(0, len(self.job_keys) - MAX_JOB_KEYS)]:
            del self.job_keys[old]
        self.save()

    def save(self) -> None:
        self._save_pending = False
        self._saved_at = time.monotonic()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = {
            "deployment": self.identity,
            "last": list(self.last),
            "submitted": self.submitted,
            "aborted": self.aborted,
            "sealed": {str(a): list(v) for a, v in self.sealed.items()},
            "job_keys": {str(j): k for j, k in self.job_keys.items()},
        }
        tmp.write_text(json.dumps(data))
        tmp.chmod(0o600)
        tmp.replace(self.path)
