"""Evidence a node has named but not yet stored on IPFS, kept on disk until it is.

A stage names its transcript's CID in the receipt it signs, and the last stage names the output's
CID on-chain, before the bytes reach IPFS (they are written off the job's critical path). A node
killed in between would leave an audit of that job without its evidence, and an honest stage
without the means to prove it. So the bytes go to this spool (a file per CID, written whole and
renamed into place) before the CID leaves the node, and leave it once IPFS holds them; a node
that starts again stores whatever the spool still holds (`pending`).

Survives the node's process dying, not the machine losing power (no fsync: the write sits on the
critical path). Private jobs' evidence is spooled as the ciphertext it is stored as.
"""

from __future__ import annotations

import logging
from pathlib import Path

from shardnet.cid import cid_v0

log = logging.getLogger("shardnet.node.spool")


class Spool:
    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _path(self, job_id: int, cid: str, name: str) -> Path:
        return self.directory / f"{job_id}.{cid}.{name}"

    def keep(self, job_id: int, cid: str, name: str, data: bytes) -> None:
        """Keep `data` (whose CID is `cid`) until `done`; kept once however often asked."""
        path = self._path(job_id, cid, name)
        if path.exists():
            return
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def done(self, job_id: int, cid: str, name: str) -> None:
        """IPFS holds it now."""
        self._path(job_id, cid, name).unlink(missing_ok=True)

    def pending(self) -> list[tuple[int, str, str, bytes]]:
        """What is still to be stored: (job, CID, name, bytes), oldest first. A file that does
        not hash to the CID in its name (cut short, tampered with) is dropped, and logged."""
        found = []
        for path in sorted(self.directory.iterdir(), key=lambda p: p.stat().st_mtime):
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write cut short: its CID never left the node
                continue
            job, cid, name = (path.name.split(".", 2) + ["", ""])[:3]
            data = path.read_bytes()
            if not job.isdigit() or not name or cid_v0(data) != cid:
                log.error("spooled evidence %s is damaged (does not hash to its CID); dropped", path)
                path.unlink(missing_ok=True)
                continue
            found.append((int(job), cid, name, data))
        return found
