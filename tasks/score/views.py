"""What the score stage shows in the Prefect UI: plain functions of its scores table, unit-tested."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tasks import ui
from tasks.counters import reasons
from tasks.score.weighting import PAIR_TYPES

STATISTICS = ("raw_score", "weight")


def histogram_png(data: pa.Table) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Columns as arrays, never rows: a run's every pair as Python objects cost more than the figure.
    ok = data.filter(pc.equal(data.column("status"), "ok"))
    # Fixed margins, not tight_layout and a tight bounding box: each of those drew the figure once
    # more (0.35 -> 0.23 CPU s at 17.6k pairs a type), paid on every run, a re-run of cached scores too.
    figure, axes = plt.subplots(2, 2, figsize=(9, 6), squeeze=False)
    figure.subplots_adjust(left=0.07, right=0.98, bottom=0.06, top=0.94, hspace=0.35, wspace=0.2)
    for i, pair_type in enumerate(PAIR_TYPES):
        typed = ok.filter(pc.equal(ok.column("pair_type"), pair_type))
        for j, (column, title) in enumerate((("raw_score", "raw score"), ("weight", "weight"))):
            values = typed.column(column).to_numpy()
            ax = axes[i][j]
            ax.hist(values, bins=20, color="tab:blue" if j == 0 else "tab:orange")
            ax.set_title(f"{pair_type} pairs: {title} (n={len(values)})")
    try:
        return ui.figure_png(figure)
    finally:
        plt.close(figure)


def judge_agreement(data: pa.Table) -> list[dict[str, Any]]:
    """Per judge: samples scored, mean of its own first score per sample, adoptions, exclusions,
    and Pearson r with every other judge over the samples both scored (None below 2 or without variance).

    Over the text pairs' judge turns as arrays: every pair's rounds as Python objects were the
    score stage's largest cost on a re-run that reused them all."""
    text = data.filter(pc.equal(data.column("pair_type"), "text"))
    rounds = text.column("rounds").combine_chunks()
    turns = pc.list_flatten(rounds)
    if len(turns) == 0:
        return []
    # A turn's sample as a number (its sample_id's code), so that first scores are found by numpy.
    sample_codes = pc.dictionary_encode(text.column("sample_id").combine_chunks()).indices
    sample = pc.take(sample_codes, pc.list_parent_indices(rounds)).to_numpy()
    judges = pc.dictionary_encode(turns.field("judge"))
    judge = judges.indices.to_numpy(zero_copy_only=False)
    error = turns.field("error")
    excluded = pc.fill_null(pc.and_(pc.is_valid(error), pc.not_equal(error, "")), False).to_numpy(zero_copy_only=False)
    adopted = pc.fill_null(turns.field("adopted"), False).to_numpy(zero_copy_only=False) & ~excluded
    scores = turns.field("score").to_numpy(zero_copy_only=False)
    own: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # judge: (samples, first scores), by sample code
    counts: dict[str, tuple[int, int]] = {}
    for code, name in enumerate(judges.dictionary.to_pylist()):
        mine = judge == code
        scored = mine & ~excluded & ~adopted
        first_samples, first = np.unique(sample[scored], return_index=True)
        own[name] = (first_samples, scores[scored][first])
        counts[name] = (int((mine & adopted).sum()), int((mine & excluded).sum()))
    table = []
    for name in sorted(own):
        first_samples, first_scores = own[name]
        entry: dict[str, Any] = {
            "judge": name,
            "samples_scored": len(first_samples),
            "mean_score": round(float(np.mean(first_scores)), 4) if len(first_samples) else None,
            "adoptions": counts[name][0],
            "exclusions": counts[name][1],
        }
        for other in sorted(own):
            if other != name:
                entry[f"r_{other}"] = _pearson(own[name], own[other])
        table.append(entry)
    return table


def _pearson(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> float | None:
    """r over the samples both (samples, scores) hold."""
    _, in_a, in_b = np.intersect1d(a[0], b[0], assume_unique=True, return_indices=True)
    if len(in_a) < 2:
        return None
    x, y = a[1][in_a], b[1][in_b]
    if x.std() < 1e-12 or y.std() < 1e-12:
        return None
    return round(float(np.corrcoef(x, y)[0, 1]), 4)


def rounds_used(data: pa.Table) -> list[dict[str, Any]]:
    """How many scored rounds text pairs took, and how each ended."""
    done = data.filter(pc.and_(pc.equal(data.column("pair_type"), "text"), pc.equal(data.column("status"), "ok")))
    tally = done.group_by(["n_rounds", "reason"]).aggregate([([], "count_all")]).to_pylist()
    ended = sorted((row["n_rounds"], str(row["reason"]), row["count_all"]) for row in tally)
    return [{"rounds": n, "ended": reason, "pairs": count} for n, reason, count in ended]


def extremes(data: pa.Table, n: int = 10) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The n highest and n lowest raw scores (ties broken by sample id), with the deciding reason."""
    ok = data.filter(pc.equal(data.column("status"), "ok"))
    order = pc.sort_indices(ok, [("raw_score", "ascending"), ("sample_id", "ascending"), ("pair_type", "ascending")])
    # Only the 2n rows shown become Python objects.
    lowest = ok.take(order[:n]).to_pylist()
    highest = ok.take(order[max(0, len(order) - n) :]).to_pylist()

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

    return [show(r) for r in reversed(highest)], [show(r) for r in lowest]


def stats_rows(counts: Mapping[str, float]) -> list[dict[str, Any]]:
    rows = []
    for pair_type in PAIR_TYPES:
        for column in STATISTICS:
            stats = reasons(counts, pair_type, column)
            if stats:
                rows.append({"pair_type": pair_type, "value": column, **stats})
    return rows
