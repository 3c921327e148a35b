"""Raw clinical-relevance scores -> DPO weights, per pair type (NormalizerConfig documents each formula)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


def apply_weights(data: pa.Table, text: NormalizerConfig, visual: NormalizerConfig | None = None) -> pa.Table:
    """``data`` (SCORES) with each pair type's ok rows weighted from their raw scores; visual pairs
    by ``visual`` (None: by ``text``'s mapping)."""
    weights: list[float | None] = [None] * data.num_rows
    ok = pc.equal(data.column("status"), "ok")
    for pair_type in PAIR_TYPES:
        config = visual if pair_type == "visual" and visual is not None else text
        rows = pc.indices_nonzero(pc.and_(ok, pc.equal(data.column("pair_type"), pair_type)))
        scores = data.column("raw_score").take(rows).to_numpy()
        for row, weight in zip(rows.to_pylist(), normalize(scores, config)):
            weights[row] = round(float(weight), 6)
    return data.set_column(data.schema.get_field_index("weight"), "weight", pa.array(weights, pa.float64()))


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


COLLAPSE_SHARE = 0.5  # this share of a pair type's weights on one bound...
COLLAPSE_STD = 0.01  # ...or a std below this: the weighting does (almost) nothing
COLLAPSE_MIN_PAIRS = 5


def bound_shares(weights: Sequence[float], config: NormalizerConfig) -> dict[str, float]:
    """Share of weights sitting on the lower and on the upper bound of the mapping."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0:
        return {}
    return {"at_lo": float(np.isclose(w, config.lo).mean()), "at_hi": float(np.isclose(w, config.hi).mean())}


def collapse_alerts(counts: dict[str, float]) -> list[str]:
    """A line per pair type whose weights collapsed: >= half on one bound, or std < 0.01 (from the
    score stage's counters, so a cached run says it too), with the raw-score range and the setting."""
    return [line for by_design, line in collapses(counts) if not by_design]


def collapse_notes(counts: dict[str, float]) -> list[str]:
    """The collapse that is by design, said as information: visual pairs whose raw scores (their
    regions' confidences) are all one value, as every annotated region's is."""
    return [line for by_design, line in collapses(counts) if by_design]


def collapses(counts: dict[str, float]) -> list[tuple[bool, str]]:
    """(by design, line) per pair type whose weights collapsed. Equal visual confidences are by
    design: no mapping can rank them, so the setting to change is where they come from. Equal
    text scores are not: the judges told no pair from another."""
    found = []
    for pair_type in PAIR_TYPES:
        n = counts.get(f"{pair_type}.ok", 0.0)
        if n < COLLAPSE_MIN_PAIRS:
            continue
        std = counts.get(f"{pair_type}.weight.std", 0.0)
        lo, hi = counts.get(f"{pair_type}.weight.at_lo", 0.0), counts.get(f"{pair_type}.weight.at_hi", 0.0)
        if max(lo, hi) < COLLAPSE_SHARE and std >= COLLAPSE_STD:
            continue
        side = "lower" if lo >= hi else "upper"
        where = f"{max(lo, hi):.0%} on the {side} bound" if max(lo, hi) >= COLLAPSE_SHARE else ""
        low, high = (counts.get(f"{pair_type}.raw_score.{stat}", float("nan")) for stat in ("min", "max"))
        weight = counts.get(f"{pair_type}.weight.mean", float("nan"))
        state = (
            f"{', '.join(filter(None, [where, f'std {std:.3f}']))} over {n:g} pairs; raw scores {low:.3f}-{high:.3f}"
        )
        if pair_type == "visual" and high - low <= 1e-9:
            found.append(
                (
                    True,
                    f"score: every visual pair has the same confidence ({state}), so all weigh {weight:.3f}: by design "
                    f"for annotated regions (localize.annotation.confidence). Regions from attention, heatmap or sam "
                    f"carry their own confidence; score.visual_normalizer sets where equal ones weigh",
                )
            )
            continue
        name = "visual_normalizer" if pair_type == "visual" else "normalizer"
        found.append(
            (
                False,
                f"score: {pair_type} weights collapsed ({state}): the clinical weighting barely changes the loss. "
                f"Change score.{name} (kind: zscore spreads any score range; paper fixes mu = 1, sigma^2 = 0.1)",
            )
        )
    return found
