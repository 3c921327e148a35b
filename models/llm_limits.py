"""Run-wide limits of an endpoint, shared by every client of it in this worker process.

Shards of a stage run in threads, each with its own event loop and its own ``LLMClient``; a
limit held by one client would be a limit per shard (eight shards at ``max_concurrency: 8``
put 64 requests on a server that asked for 8). So the limits live here, one ``EndpointLimits``
per process and endpoint: requests in flight, the request rate and a server's Retry-After
pause, and the optional fields the endpoint refused (learned once, never sent again by any
shard). Event loops of several threads wait on them, hence thread locks and futures handed
across loops rather than asyncio primitives, which belong to one loop.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol


class Slots:
    """A semaphore that event loops in different threads can share: ``async with slots.held()``."""

    def __init__(self, size: int):
        self.size = size
        self._free = size
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    @asynccontextmanager
    async def held(self) -> AsyncIterator[None]:
        await self._acquire()
        try:
            yield
        finally:
            self._release()

    async def _acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            waiter = (loop, loop.create_future())
            self._waiters.append(waiter)
        try:
            await waiter[1]
        except asyncio.CancelledError:
            with self._lock:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
                    raise
            # The slot was handed over as the wait was cancelled: hand it on.
            if waiter[1].done() and not waiter[1].cancelled():
                self._release()
            raise

    def _release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, future = self._waiters.popleft()
                if loop.is_closed():
                    continue
                loop.call_soon_threadsafe(self._grant, future)
                return
            self._free += 1

    def _grant(self, future: asyncio.Future[None]) -> None:
        if future.done():  # cancelled while the grant travelled: the slot goes to the next waiter
            self._release()
        else:
            future.set_result(None)


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (no bursts: servers see a steady rate),
    and holds every start while the server has asked to back off (Retry-After): one 429 pauses
    every shard, not only the request that met it."""

    def __init__(self, rpm: float | None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._next = max(self._next, time.monotonic() + seconds)

    async def wait(self) -> None:
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)


class Limited(Protocol):
    """What names an endpoint's limits (an endpoint's settings; models/ knows no config class)."""

    base_url: str
    model: str
    max_concurrency: int
    rpm: float | None


class EndpointLimits:
    def __init__(self, endpoint: Limited):
        self.slots = Slots(endpoint.max_concurrency)
        self.rate = RateLimiter(endpoint.rpm)
        self.refused: set[str] = set()


_LIMITS: dict[tuple[str, str, int, float | None], EndpointLimits] = {}
_LIMITS_LOCK = threading.Lock()


def limits_for(endpoint: Limited) -> EndpointLimits:
    """This process's limits of ``endpoint`` (its URL and model, as resolved for a served one,
    and the limits it asks for)."""
    key = (endpoint.base_url, endpoint.model, endpoint.max_concurrency, endpoint.rpm)
    with _LIMITS_LOCK:
        if key not in _LIMITS:
            _LIMITS[key] = EndpointLimits(endpoint)
        return _LIMITS[key]
