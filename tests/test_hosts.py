"""The multi-host harness's pieces that need no root: the delay relay (latency in user space)
and the swarm's multiaddr parsing."""

import asyncio
import time

import pytest

from node.swarm import peer_of
from shardnet.hosts import DelayRelay, Hosts, HostsError


def test_delay_relay_delays_each_way_keeps_order_and_passes_the_end():
    async def run():
        async def echo(reader, writer):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        relay = DelayRelay(asyncio.get_running_loop(), "127.0.0.1", ("127.0.0.1", port), 0.05)
        reader, writer = await asyncio.open_connection("127.0.0.1", await relay.start())
        started = time.monotonic()
        writer.write(b"ping")
        await writer.drain()
        assert await reader.readexactly(4) == b"ping"
        rtt = time.monotonic() - started
        payload = bytes(range(256)) * 4096  # 1 MiB, in many chunks
        writer.write(payload)
        await writer.drain()
        assert await reader.readexactly(len(payload)) == payload  # in order, nothing lost
        writer.write_eof()
        assert await reader.read() == b""  # the end crosses too
        await relay.stop()
        server.close()
        return rtt

    rtt = asyncio.run(run())
    assert 0.1 <= rtt < 0.5  # 50 ms each way


def test_peer_of_reads_the_peer_id_a_multiaddr_ends_in():
    assert peer_of("/ip4/10.0.0.2/tcp/4001/p2p/12D3KooWabc") == "12D3KooWabc"
    assert peer_of("/ip4/10.0.0.2/tcp/4001") is None
    assert peer_of("/ip4/10.0.0.2/tcp/4001/p2p/") is None


def test_hosts_refuse_a_tag_that_cannot_name_interfaces():
    with pytest.raises(HostsError, match="tag"):
        Hosts("too-long")
