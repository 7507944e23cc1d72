"""Background processes a network is made of (Anvil, IPFS daemons), started detached and
recorded by pid and a marker from their command line, so a later command can tell whether the
process it recorded is still the one it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from shardnet import tools
from shardnet.errors import DevnetError, ShardnetError
from shardnet.storage import IpfsClient


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def ours(record: dict[str, Any]) -> bool:
    """The recorded process is still running and is still the program we started."""
    return alive(record["pid"]) and record["marker"] in cmdline(record["pid"])


def spawn(cmd: list[str], log: Path, marker: str, port: int) -> dict[str, Any]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=tools.repo_root(),
        )
    return {"pid": proc.pid, "marker": marker, "port": port, "log": str(log)}


def wait_ready(ready: Callable[[], bool], record: dict[str, Any], what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(record["pid"]):
            tail = Path(record["log"]).read_text(errors="replace")[-800:]
            raise DevnetError(f"{what} exited while starting; see {record['log']}:\n{tail}")
        try:
            if ready():
                return
        except (httpx.HTTPError, ShardnetError, OSError):
            pass
        time.sleep(0.1)
    raise DevnetError(f"{what} did not answer within {timeout:.0f} s; see {record['log']}")


def stop(record: dict[str, Any], grace: float = 5.0) -> bool:
    if not ours(record):
        return False
    pid = record["pid"]
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and alive(pid):
        time.sleep(0.05)
    if alive(pid):
        os.killpg(pid, signal.SIGKILL)
        while alive(pid):
            time.sleep(0.05)
    return True


# POST to a URL, exit status 0 when it answers 2xx (urllib raises otherwise)
_PROBE = "import sys, urllib.request as u; u.urlopen(u.Request(sys.argv[1], method='POST'), timeout=1)"


def start_ipfs_daemon(
    repo: Path, api_port: int, swarm: str, log: Path, prefix: Sequence[str] = (), timeout_s: float = 30.0
) -> dict[str, Any]:
    """Start one more IPFS daemon (a node's own), its RPC API on loopback `api_port` and bitswap
    on multiaddr `swarm`, and wait until it answers. `prefix` runs it inside something, e.g.
    `ip netns exec NAME`. Stop it with `stop(record)`."""
    cmd = [*prefix, tools.node_binary(), str(tools.ipfs_daemon_script()), str(repo), str(api_port), swarm]
    record = spawn(cmd, log, str(repo), api_port)
    api = f"http://127.0.0.1:{api_port}"
    if prefix:  # the API is on the namespace's loopback: ask from inside it (with this Python: no curl needed)
        probe = [*prefix, sys.executable, "-c", _PROBE, f"{api}/api/v0/id"]
        wait_ready(
            lambda: subprocess.run(probe, capture_output=True).returncode == 0, record, "an IPFS daemon", timeout_s
        )
    else:
        wait_ready(lambda: bool(IpfsClient(api, timeout=1).peer_id()), record, "an IPFS daemon", timeout_s)
    return record
