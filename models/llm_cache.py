"""The LLM client's bookkeeping: replies cached on disk by request, and request starts spaced
for a requests-per-minute limit."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

CACHE_FILE = "llm-cache.sqlite"


class ResponseCache:
    """Replies by request key, in one sqlite file (safe across processes, atomic per row)."""

    def __init__(self, folder: str | os.PathLike[str]):
        Path(folder).mkdir(parents=True, exist_ok=True)
        self.path = Path(folder) / CACHE_FILE
        self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get(self, key: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def put(self, key: str, reply: Mapping[str, Any]) -> None:
        self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?)", (key, json.dumps(reply), time.time()))

    def close(self) -> None:
        self._db.close()


class RateLimiter:
    """Spaces request starts at least 60/rpm seconds apart (no bursts: servers see a steady rate),
    and holds every start while the server has asked the client to back off (Retry-After):
    one 429 pauses the whole client, not only the request that met it."""

    def __init__(self, rpm: float | None):
        self.interval = 60.0 / rpm if rpm else 0.0
        self._next = 0.0

    def pause(self, seconds: float) -> None:
        self._next = max(self._next, time.monotonic() + seconds)

    async def wait(self) -> None:
        now = time.monotonic()
        start = max(now, self._next)
        self._next = start + self.interval
        if start > now:
            await asyncio.sleep(start - now)
