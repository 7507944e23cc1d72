"""How a waiting client wakes: a websocket log subscription to its job's events (`JobNotices`),
so `shardnet.client.Client.wait` reads the job's history when something happened rather than
polling for it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from shardnet.events import EventDecoder


class JobNotices:
    """Wakes a waiting client as soon as one of its job's events is mined: a websocket log
    subscription to the market's events that index the job (about 10 ms after the block), so
    `Client.wait` does not poll. With a `decoder` and `read_output`, a ResultSubmitted notice
    starts the read of the output it names in a thread, while the client reads the job's
    history (`output_read`). Raises OSError or ValueError when the chain offers none."""

    def __init__(
        self,
        ws_url: str,
        market: str,
        job_id: int,
        decoder: EventDecoder | None = None,
        read_output: Callable[[str], Any] | None = None,
    ):
        from websockets.sync.client import connect

        self._open = contextlib.ExitStack()
        self.ws = self._open.enter_context(connect(ws_url, open_timeout=2, max_size=1 << 20))
        self.decoder, self.read_output = decoder, read_output
        self._reading: tuple[str, Future[Any]] | None = None  # an output CID, its read under way
        self._pool: ThreadPoolExecutor | None = None
        topic = "0x" + job_id.to_bytes(32, "big").hex()
        request = {"address": market, "topics": [None, topic]}
        self.ws.send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["logs", request]}))
        reply = json.loads(self.ws.recv(timeout=2))
        if "result" not in reply:
            self.close()
            raise ValueError(f"eth_subscribe refused: {reply.get('error')}")

    def wait(self, timeout_s: float) -> bool:
        """True when an event came within `timeout_s` (every notice queued meanwhile is taken)."""
        try:
            self._take(self.ws.recv(timeout=timeout_s))
        except TimeoutError:
            return False
        while True:
            try:
                self._take(self.ws.recv(timeout=0))
            except TimeoutError:
                return True

    def _take(self, notice: str | bytes) -> None:
        if self.decoder is None or self.read_output is None or self._reading is not None:
            return
        try:
            event = self.decoder.decode(json.loads(notice)["params"]["result"])
        except (ValueError, KeyError, TypeError):
            return
        if event is not None and event.name == "ResultSubmitted":
            cid = str(event.args["outputCid"])
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="output-read")
            self._reading = cid, self._pool.submit(self.read_output, cid)

    def output_read(self, cid: str) -> Future[Any] | None:
        """The read of output `cid` started by its notice, if one was (the notice is only a hint:
        the job's history, read from the chain, names the output)."""
        return self._reading[1] if self._reading is not None and self._reading[0] == cid else None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        self._open.close()
