"""What a node remembers across restarts: the position of the last event it acted on and the
jobs it already settled, bound to one deployment (a state folder reused against another chain
or redeployed contracts starts over)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from shardnet.deployment import Deployment

log = logging.getLogger("shardnet.node.state")


class AgentState:
    def __init__(self, state_dir: Path, deployment: Deployment):
        self.path = Path(state_dir) / "state.json"
        self.identity = f"{deployment.chain_id}:{deployment.address('JobMarket')}:{deployment.deploy_block}"
        self.last: tuple[int, int] = (-1, -1)  # (block, log index) of the last event acted on
        self.submitted: list[int] = []  # jobs whose result this node submitted
        self.aborted: list[int] = []  # jobs this node aborted
        if self.path.exists():
            saved = json.loads(self.path.read_text())
            if saved.get("deployment") == self.identity:
                self.last = (int(saved["last"][0]), int(saved["last"][1]))
                self.submitted = list(saved.get("submitted", []))
                self.aborted = list(saved.get("aborted", []))
            else:
                log.warning("state in %s is for another deployment; starting over", self.path)

    def acted_on(self, key: tuple[int, int]) -> bool:
        """True if the event at `key` was handled before (a restart never acts twice)."""
        return key <= self.last

    def advance(self, key: tuple[int, int]) -> None:
        self.last = key
        self.save()

    def settled(self, job_id: int, how: str) -> None:
        (self.submitted if how == "submitted" else self.aborted).append(job_id)
        self.save()

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        data = {
            "deployment": self.identity,
            "last": list(self.last),
            "submitted": self.submitted,
            "aborted": self.aborted,
        }
        tmp.write_text(json.dumps(data))
        tmp.replace(self.path)
