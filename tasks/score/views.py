"""What the score stage shows in the Prefect UI: plain functions of its scores table, unit-tested."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from tasks import ui
from tasks.counters import reasons
from tasks.score.weighting import PAIR_TYPES

STATISTICS = ("raw_score", "weight")


def histogram_png(data: pa.Table) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # The columns drawn, not whole rows: every pair's judge rounds as Python objects cost more than the figure.
    rows = [r for r in data.select(["status", "pair_type", *STATISTICS]).to_pylist() if r["status"] == "ok"]
    figure, axes = plt.subplots(2, 2, figsize=(9, 6), squeeze=False)
    for i, pair_type in enumerate(PAIR_TYPES):
        for j, (column, title) in enumerate((("raw_score", "raw score"), ("weight", "weight"))):
            values = [r[column] for r in rows if r["pair_type"] == pair_type]
            ax = axes[i][j]
            ax.hist(values, bins=20, color="tab:blue" if j == 0 else "tab:orange")
            ax.set_title(f"{pair_type} pairs: {title} (n={len(values)})")
    figure.tight_layout()
    try:
        return ui.figure_png(figure)
    finally:
        plt.close(figure)


def judge_agreement(data: pa.Table) -> list[dict[str, Any]]:
    """Per judge: samples scored, mean of its own first score per sample, adoptions, exclusions,
    and Pearson r with every other judge over the samples both scored (None below 2 or without variance)."""
    first: dict[str, dict[str, float]] = {}
    adopted: dict[str, int] = {}
    excluded: dict[str, int] = {}
    for row in data.to_pylist():
        if row["pair_type"] != "text":
            continue
        for turn in row["rounds"] or []:
            name = turn["judge"]
            first.setdefault(name, {})
            adopted.setdefault(name, 0)
            excluded.setdefault(name, 0)
            if turn["error"]:
                excluded[name] += 1
            elif turn["adopted"]:
                adopted[name] += 1
            elif row["sample_id"] not in first[name]:
                first[name][row["sample_id"]] = turn["score"]
    names = sorted(first)
    table = []
    for name in names:
        own = first[name]
        entry: dict[str, Any] = {
            "judge": name,
            "samples_scored": len(own),
            "mean_score": round(float(np.mean(list(own.values()))), 4) if own else None,
            "adoptions": adopted[name],
            "exclusions": excluded[name],
        }
        for other in names:
            if other != name:
                entry[f"r_{other}"] = _pearson(own, first[other])
        table.append(entry)
    return table


def _pearson(a: Mapping[str, float], b: Mapping[str, float]) -> float | None:
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    x = np.array([a[k] for k in common])
    y = np.array([b[k] for k in common])
    if x.std() < 1e-12 or y.std() < 1e-12:
        return None
    return round(float(np.corrcoef(x, y)[0, 1]), 4)


def rounds_used(data: pa.Table) -> list[dict[str, Any]]:
    """How many scored rounds text pairs took, and how each ended."""
    tally: dict[tuple[int, str], int] = {}
    for row in data.select(["pair_type", "status", "n_rounds", "reason"]).to_pylist():
        if row["pair_type"] == "text" and row["status"] == "ok":
            key = (row["n_rounds"], str(row["reason"]))
            tally[key] = tally.get(key, 0) + 1
    return [{"rounds": n, "ended": reason, "pairs": count} for (n, reason), count in sorted(tally.items())]


def extremes(data: pa.Table, n: int = 10) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The n highest and n lowest raw scores (ties broken by sample id), with the deciding reason."""
    rows = [r for r in data.to_pylist() if r["status"] == "ok"]
    rows.sort(key=lambda r: (r["raw_score"], r["sample_id"], r["pair_type"]))

    def show(r: Mapping[str, Any]) -> dict[str, Any]:
        scored = [t for t in r["rounds"] or [] if not t["error"]]
        return {
            "sample_id": r["sample_id"],
            "pair_type": r["pair_type"],
            "raw_score": r["raw_score"],
            "weight": r["weight"],
            "error_type": r["error_type"],
            "why": (scored[-1]["reason"] if scored else r["reason"])[:160],
        }

    return [show(r) for r in reversed(rows[-n:])], [show(r) for r in rows[:n]]


def stats_rows(counts: Mapping[str, float]) -> list[dict[str, Any]]:
    rows = []
    for pair_type in PAIR_TYPES:
        for column in STATISTICS:
            stats = reasons(counts, pair_type, column)
            if stats:
                rows.append({"pair_type": pair_type, "value": column, **stats})
    return rows
