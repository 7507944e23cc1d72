"""Many hosts on one machine, for tests and benches: each host is a Linux network namespace with
its own network stack, joined to one bridge by a veth link whose bandwidth is capped by a `tbf`
qdisc at both ends. Latency is added in user space: `netem` is missing on these kernels, so a
host's service is exposed through a relay in the root namespace that holds every chunk it
forwards for the link's one-way delay, in each direction, keeping order (`DelayRelay`).

    hosts = Hosts("t1", rate_mbit=100, delay_ms=20).start()
    chain = hosts.add("chain")                # 10.213.x.10, its own namespace
    url = hosts.expose(chain, 8545)           # http://10.213.x.1:<port>, 20 ms each way
    subprocess.run([*chain.prefix, "anvil", "--host", chain.ip])
    hosts.cut(chain)                          # ip link set <its veth> down
    hosts.close()                             # relays stopped, namespaces and bridge deleted

Needs root (or CAP_NET_ADMIN) and iproute2. Traffic stays inside namespaces this object made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass

from shardnet.errors import ShardnetError


class HostsError(ShardnetError):
    pass


def _ip(*args: str) -> None:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise HostsError(f"'ip {' '.join(args)}' failed: {done.stderr.strip()}")


def _tc(*args: str) -> None:
    done = subprocess.run(["tc", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise HostsError(f"'tc {' '.join(args)}' failed: {done.stderr.strip()}")


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    ip: str
    veth: str  # the link's end on the bridge (root namespace)

    @property
    def prefix(self) -> list[str]:
        """Put before a command to run it on this host."""
        return ["ip", "netns", "exec", self.netns]


class DelayRelay:
    """A TCP relay that delays every chunk by `delay_s` in each direction, in order. Many
    connections; each is two pipes, each pipe a reader that stamps chunks and a writer that
    sends each one when its time comes (so bandwidth is not limited by the delay)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, listen_host: str, target: tuple[str, int], delay_s: float):
        self.loop = loop
        self.listen_host = listen_host
        self.target = target
        self.delay_s = delay_s
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, self.listen_host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def read() -> None:
            try:
                while chunk := await reader.read(65536):
                    queue.put_nowait((time.monotonic() + self.delay_s, chunk))
            except OSError:
                pass
            finally:  # the end travels with the same delay, after everything before it
                queue.put_nowait((time.monotonic() + self.delay_s, b""))

        async def write() -> None:
            while True:
                due, chunk = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()

        reading = asyncio.ensure_future(read())
        try:
            await write()
        finally:
            reading.cancel()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.wait_for(asyncio.open_connection(*self.target), 5)
        except (OSError, TimeoutError):
            client_w.close()
            return
        self._writers |= {client_w, server_w}
        try:
            await asyncio.gather(self._pipe(client_r, server_w), self._pipe(server_r, client_w))
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            for w in (client_w, server_w):
                w.close()
                self._writers.discard(w)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()


class Hosts:
    def __init__(self, tag: str, rate_mbit: int = 100, delay_ms: float = 20.0):
        if len(tag) > 4 or not tag.isalnum():
            raise HostsError(f"tag {tag!r}: use 1-4 letters or digits (it goes into interface names)")
        self.tag = tag
        self.rate_mbit = rate_mbit
        self.delay_s = delay_ms / 1000
        self.subnet = f"10.213.{random.randrange(1, 250)}"
        self.bridge = f"snb{tag}"
        self.gateway = f"{self.subnet}.1"
        self.hosts: list[Host] = []
        self.relays: list[DelayRelay] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="delay-relays", daemon=True)

    def start(self) -> Hosts:
        if os.geteuid() != 0:
            raise HostsError("network namespaces need root (or CAP_NET_ADMIN); run the multi-host tests as root")
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                raise HostsError(f"'{tool}' is not on PATH; install iproute2")
        self._sweep()  # what a killed run with the same tag left behind
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        self._thread.start()
        return self

    def _shape(self, device: str, netns: str | None = None) -> None:
        where = ["-n", netns] if netns else []
        burst = max(32, self.rate_mbit * 1000 // 8 // 100)  # ~10 ms of traffic, in KiB
        _tc(*where, "qdisc", "add", "dev", device, "root", "tbf", "rate", f"{self.rate_mbit}mbit",
            "burst", f"{burst}kb", "latency", "100ms")  # fmt: skip

    def add(self, name: str) -> Host:
        """A new host: its own namespace, a veth link to the bridge capped at the link rate."""
        index = len(self.hosts)
        netns, outside, inside = f"sn{self.tag}-{name}", f"sn{self.tag}{index}o", f"sn{self.tag}{index}i"
        ip = f"{self.subnet}.{10 + index}"
        _ip("netns", "add", netns)
        _ip("link", "add", outside, "type", "veth", "peer", "name", inside)
        _ip("link", "set", inside, "netns", netns)
        _ip("link", "set", outside, "master", self.bridge)
        _ip("link", "set", outside, "up")
        _ip("-n", netns, "addr", "add", f"{ip}/24", "dev", inside)
        _ip("-n", netns, "link", "set", inside, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "route", "add", "default", "via", self.gateway)
        self._shape(outside)
        self._shape(inside, netns)
        host = Host(name, netns, ip, outside)
        self.hosts.append(host)
        return host

    def expose(self, host: Host, port: int) -> str:
        """An address in the root namespace (reachable from every host) that reaches `host`'s
        `port` with the link's delay each way: 'IP:PORT'."""
        relay = DelayRelay(self._loop, self.gateway, (host.ip, port), self.delay_s)
        relay_port = asyncio.run_coroutine_threadsafe(relay.start(), self._loop).result(10)
        self.relays.append(relay)
        return f"{self.gateway}:{relay_port}"

    def cut(self, host: Host) -> None:
        """Take the host's link down (nothing goes in or out, as if its cable were pulled)."""
        _ip("link", "set", host.veth, "down")

    def close(self) -> None:
        if self._thread.is_alive():
            for relay in self.relays:
                with contextlib.suppress(Exception):
                    asyncio.run_coroutine_threadsafe(relay.stop(), self._loop).result(5)

            async def cancel_all() -> None:
                tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(cancel_all(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._sweep()

    def _sweep(self) -> None:
        """Kill what still runs in this tag's namespaces, delete them and the bridge."""
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split("\n")
        for netns in {line.split()[0] for line in listed if line.startswith(f"sn{self.tag}-")}:
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def __enter__(self) -> Hosts:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
