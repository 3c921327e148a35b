"""Progress a person can follow in the terminal while a per-sample stage computes, beside the
Prefect progress artifact (which moves shard by shard, in the UI).

The item cache (tasks.store.items) opens a ``StageProgress`` for every build with items to
compute; a stage that knows when each sample finishes (hallucinate, score: the slow ones, one
LLM call after another) ticks it per sample with the sample's failure reason, if any; the others
advance it as shards finish. A line goes to stderr when the build starts, at most every
``interval_s`` while it runs, and when it ends::

    hallucinate: 23 samples to compute (0 reused)
    hallucinate: 9/23 samples, 0.45/s, 1 failed (same_as_answer 1), 20 s
    hallucinate: done 23/23 in 51.2 s, 0.45/s, 1 failed (same_as_answer 1)

Only the process that runs the build prints: shards on Dask or Ray workers tick nothing here.
"""

from __future__ import annotations

import collections
import sys
import threading
import time
from typing import TextIO

INTERVAL_S = 5.0


class StageProgress:
    def __init__(
        self,
        stage: str,
        total: int,
        reused: int = 0,
        unit: str = "samples",
        stream: TextIO | None = None,
        interval_s: float = 0,
    ):
        self.stage = stage
        self.unit = unit
        self.total = total
        self.reused = reused
        self.stream = stream
        self.interval_s = interval_s or INTERVAL_S
        self.done = 0
        self.failures: collections.Counter[str] = collections.Counter()
        self.per_item = False  # the stage ticks samples itself: shard ends add nothing
        self.started = time.monotonic()
        self._printed = self.started
        self._lock = threading.Lock()
        self._write(f"{stage}: {total} {unit} to compute ({reused} reused)")

    def tick(self, failure: str | None = None) -> None:
        """One sample finished (``failure``: why it has no result, or None)."""
        with self._lock:
            self.per_item = True
            self.done += 1
            if failure:
                self.failures[str(failure).split(":")[0]] += 1
            due = time.monotonic() - self._printed >= self.interval_s and self.done < self.total
        if due:
            self._write(self.line())

    def shard_done(self, items: int) -> None:
        with self._lock:
            if self.per_item:
                return
            self.done += items
            due = time.monotonic() - self._printed >= self.interval_s and self.done < self.total
        if due:
            self._write(self.line())

    def line(self, final: bool = False) -> str:
        seconds = time.monotonic() - self.started
        rate = self.done / seconds if seconds > 0 else 0.0
        failed = sum(self.failures.values())
        reasons = ", ".join(f"{reason} {n}" for reason, n in self.failures.most_common(4))
        # Failures are known only where the stage ticks its samples itself.
        failures = "" if not self.per_item else f", {failed} failed ({reasons})" if failed else ", 0 failed"
        if final:
            return f"{self.stage}: done {self.done}/{self.total} in {seconds:.1f} s, {rate:.2f}/s{failures}"
        return f"{self.stage}: {self.done}/{self.total} {self.unit}, {rate:.2f}/s{failures}, {seconds:.0f} s"

    def finish(self) -> None:
        self._write(self.line(final=True))

    def _write(self, text: str) -> None:
        self._printed = time.monotonic()
        print(text, file=self.stream or sys.stderr, flush=True)


_ACTIVE: dict[str, StageProgress] = {}
_LOCK = threading.Lock()


def begin(stage: str, total: int, reused: int = 0, unit: str = "samples") -> StageProgress:
    progress = StageProgress(stage, total, reused, unit)
    with _LOCK:
        _ACTIVE[stage] = progress
    return progress


def tick(stage: str, failure: str | None = None) -> None:
    """One sample of ``stage`` finished; nothing when no build of it runs in this process."""
    with _LOCK:
        progress = _ACTIVE.get(stage)
    if progress is not None:
        progress.tick(failure)


def shard_done(stage: str, items: int) -> None:
    with _LOCK:
        progress = _ACTIVE.get(stage)
    if progress is not None:
        progress.shard_done(items)


def finish(stage: str) -> None:
    with _LOCK:
        progress = _ACTIVE.pop(stage, None)
    if progress is not None:
        progress.finish()
