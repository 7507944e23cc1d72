"""Long-running processes stop cleanly on SIGTERM / SIGINT."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any


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
