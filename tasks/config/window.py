"""A window of the samples: the part of a data set one round of `mmedpo iterate` curates."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field

from tasks.config.base import StageConfig


class SampleWindow(StageConfig):
    """``count`` samples of ``splits``, from position ``start`` of a fixed shuffled order.

    The order is a hash of (``seed``, sample id), so it does not depend on how the data set is
    stored and a grown data set keeps every old sample's place relative to the others. Round r of
    `mmedpo iterate` curates positions ``(r - 1) * count`` to ``r * count - 1``, wrapping around
    when the samples run out. The hallucinate and assemble stages apply the same window, so
    samples outside it get neither a rejection nor a pair.
    """

    splits: list[str] = Field(default=["train"], description="Sample splits the window is taken from")
    start: int = Field(default=0, ge=0, description="First position in the shuffled order")
    count: int = Field(default=1, ge=1, description="Samples in the window (all of them when there are fewer)")
    seed: int = Field(default=0, description="Seed of the shuffled order")

    def select(self, samples: Iterable[Mapping[str, Any]]) -> set[str]:
        """The sample ids inside the window."""
        ids = sorted(
            {s["sample_id"] for s in samples if s["split"] in self.splits},
            key=lambda sid: (hashlib.sha256(f"{self.seed}:{sid}".encode()).hexdigest(), sid),
        )
        if len(ids) <= self.count:
            return set(ids)
        return {ids[(self.start + i) % len(ids)] for i in range(self.count)}
