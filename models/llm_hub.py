"""One HTTP client per worker process and endpoint, with the endpoint's run-wide limits.

Shards of a stage run in threads (Prefect's thread runner), each with its own event loop. An
HTTP client belongs to the loop it first sends on, so a client per shard meant a connection pool
per shard and limits that had to be stitched across loops. Here the worker process has one hub:
an event loop in a daemon thread that owns every endpoint's client (``openai.AsyncOpenAI``, one
connection pool) and its limits (models/llm_limits.py); a shard's ``LLMClient`` hands each request
to it (``Hub.run``) and awaits the answer on its own loop. The process and Ray runners get one hub
per worker process (a forked child makes its own: the parent's loop thread does not survive a
fork). The clients are closed when the process exits.

The API key lives only inside the HTTP client; the hub keys clients by the key's digest.
"""

from __future__ import annotations

import asyncio
import atexit
import hashlib
import logging
import os
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import openai

from models.llm_limits import EndpointLimits, Limited, limits_key

log = logging.getLogger(__name__)

T = TypeVar("T")
CLOSE_TIMEOUT_S = 5.0


class Hub:
    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="llm-hub", daemon=True)
        self._thread.start()
        self._lock = threading.Lock()
        self._clients: dict[tuple[str, str], openai.AsyncOpenAI] = {}
        self._limits: dict[tuple[str, str, int, float | None], EndpointLimits] = {}

    def http(self, base_url: str, api_key: str) -> openai.AsyncOpenAI:
        """The process's client of ``base_url`` (our own retry loop owns retries: the SDK's are off;
        timeouts are set per request)."""
        key = (base_url, hashlib.sha256(api_key.encode()).hexdigest())
        with self._lock:
            if key not in self._clients:
                self._clients[key] = openai.AsyncOpenAI(api_key=api_key, base_url=base_url, max_retries=0)
            return self._clients[key]

    def limits(self, endpoint: Limited) -> EndpointLimits:
        key = limits_key(endpoint)
        with self._lock:
            if key not in self._limits:
                self._limits[key] = EndpointLimits(endpoint)
            return self._limits[key]

    async def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Await ``work`` on the hub's loop from the caller's loop; cancelling the caller cancels it."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(work, self.loop))

    def wait(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the hub's loop from synchronous code."""
        return asyncio.run_coroutine_threadsafe(work, self.loop).result()

    def forget(self, base_url: str) -> None:
        """Close and drop ``base_url``'s clients and limits: a managed server that stopped is never
        asked again (the next run serves on another port), and a long-lived worker would otherwise
        keep a pool per port it ever served on."""
        with self._lock:
            clients = [self._clients.pop(key) for key in [k for k in self._clients if k[0] == base_url]]
            for key in [k for k in self._limits if k[0] == base_url]:
                del self._limits[key]
        # Dropped above whatever follows: closing their connections is tidying up, and a failure
        # here must not stop the caller (a server pool stopping its other servers) nor wait on a
        # loop that process exit already stopped.
        if clients and self.loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(_close_all(clients), self.loop).result(CLOSE_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - see above
                log.warning("LLM clients of %s not closed cleanly: %s", base_url, type(exc).__name__)

    def close(self) -> None:
        """Close every client and stop the loop (at process exit; a forked child, which inherits the
        parent's exit hook but not its loop thread, leaves them alone)."""
        if self.loop.is_closed() or os.getpid() != self.pid:
            return
        clients = list(self._clients.values())
        self._clients.clear()
        try:
            asyncio.run_coroutine_threadsafe(_close_all(clients), self.loop).result(CLOSE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - exiting anyway: say so, do not mask the exit
            log.warning("LLM clients not closed cleanly at exit: %s", type(exc).__name__)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(CLOSE_TIMEOUT_S)
        if not self._thread.is_alive():
            self.loop.close()


async def _close_all(clients: list[openai.AsyncOpenAI]) -> None:
    await asyncio.gather(*(client.close() for client in clients))


_HUB: Hub | None = None
_HUB_LOCK = threading.Lock()


def hub() -> Hub:
    """This process's hub, started on first use."""
    global _HUB
    with _HUB_LOCK:
        if _HUB is None:
            _HUB = Hub()
            atexit.register(_HUB.close)
        return _HUB


def forget(base_url: str) -> None:
    """``Hub.forget`` on this process's hub, if it has one (starting a hub to forget is pointless)."""
    if _HUB is not None and _HUB.pid == os.getpid():
        _HUB.forget(base_url)


def _forget_parents_hub() -> None:
    global _HUB, _HUB_LOCK
    _HUB, _HUB_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_parents_hub)
