"""Long-running processes stop cleanly on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

M_ARENA_MAX = -8  # glibc mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (what MALLOC_ARENA_MAX does, set from inside): a node's threads
    (asyncio.to_thread, torch) each get an arena otherwise, and freed activations and caches stay
    scattered over them. Measured on 80 jobs over six nodes: resident growth per node 85-210 MB
    with the default, 14-127 MB with 2. Call before threads start; False where not glibc."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        return bool(name) and ctypes.CDLL(name).mallopt(M_ARENA_MAX, arenas) == 1
    except (OSError, AttributeError):
        return False


def run_until_signal(main: Coroutine[Any, Any, None]) -> None:
    """asyncio.run(main), cancelled on SIGTERM or SIGINT (some libraries catch SIGTERM otherwise)."""

    async def runner() -> None:
        task = asyncio.ensure_future(main)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:  # libuv's loop: lower latency per data-plane hop than the default loop
        import uvloop

        uvloop.run(runner())
    except ImportError:
        asyncio.run(runner())
