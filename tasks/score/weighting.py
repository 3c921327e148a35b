"""Raw clinical-relevance scores -> DPO weights, per pair type (NormalizerConfig documents each formula)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from tasks.config import NormalizerConfig

PAIR_TYPES = ("text", "visual")


def normalize(scores: Sequence[float], config: NormalizerConfig) -> np.ndarray:
    """Raw scores of one pair type -> weights (NormalizerConfig documents each formula)."""
    s = np.asarray(scores, dtype=np.float64)
    if config.kind == "none":
        return s.copy()
    if config.kind == "paper":
        z = (s - config.mu) / math.sqrt(config.sigma2)
        return np.clip(config.anchor + config.gain * z, config.lo, config.hi)
    if s.size == 0:
        return s.copy()
    std = float(s.std())
    # All-equal scores carry no ranking: every pair gets the middle weight.
    z = (s - s.mean()) / std if std > 1e-12 else np.zeros_like(s)
    mid, half = (config.lo + config.hi) / 2, (config.hi - config.lo) / 2
    return mid + half * np.clip(z, -config.span, config.span) / config.span


def apply_weights(rows: list[dict[str, Any]], config: NormalizerConfig) -> None:
    for pair_type in PAIR_TYPES:
        scored = [row for row in rows if row["pair_type"] == pair_type and row["status"] == "ok"]
        weights = normalize([row["raw_score"] for row in scored], config)
        for row, weight in zip(scored, weights):
            row["weight"] = round(float(weight), 6)


def distribution(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return {}
    q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "p25": float(q25),
        "median": float(q50),
        "p75": float(q75),
        "max": float(v.max()),
    }
