"""Run-wide limits of an endpoint: requests in flight, the request rate, a server's Retry-After
pause, and the optional fields it refused.

One ``EndpointLimits`` per worker process and endpoint (models/llm_hub.py holds them): every
shard's requests run on the hub's one event loop, so the in-flight limit is a plain asyncio
semaphore of that loop, and a limit held per shard (eight shards at ``max_concurrency: 8`` putting
64 requests on a server that asked for 8) cannot happen.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Protocol


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
    """Used only on the hub's event loop (the semaphore binds to the loop that first waits on it)."""

    def __init__(self, endpoint: Limited):
        self.slots = asyncio.Semaphore(endpoint.max_concurrency)
        self.rate = RateLimiter(endpoint.rpm)
        # Written by the shards' threads (a set's add is atomic): a field refused once is never sent again.
        self.refused: set[str] = set()


def limits_key(endpoint: Limited) -> tuple[str, str, int, float | None]:
    """What makes two endpoints' limits one: the URL and model (as resolved for a served one) and
    the limits asked for."""
    return (endpoint.base_url, endpoint.model, endpoint.max_concurrency, endpoint.rpm)
