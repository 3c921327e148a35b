"""A preference set's data card (CARD.md): counts, length statistics, weight histogram, examples,
read from the set's columns (its every pair as a Python dict cost more than the set's table)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def data_card(pairs: pa.Table, dropped: Sequence[Mapping[str, Any]], rejections: str | None = None) -> str:
    lines = ["# Preference set", ""]
    lines += [
        "## Pairs",
        "",
        count_table(pairs, ("dataset", "pair_type")),
        "",
        count_table(pairs, ("pair_type", "error_type")),
        "",
    ]
    text = pairs.filter(pc.equal(pairs.column("pair_type"), "text"))
    if text.num_rows:
        chosen = pc.utf8_length(text.column("chosen")).to_numpy()
        rejected = pc.utf8_length(text.column("rejected")).to_numpy()
        lines += [
            "## Text pairs: chosen vs rejected length (characters)",
            "",
            "| side | mean | median | max |",
            "|---|---:|---:|---:|",
            f"| chosen | {chosen.mean():.1f} | {np.median(chosen):.1f} | {chosen.max()} |",
            f"| rejected | {rejected.mean():.1f} | {np.median(rejected):.1f} | {rejected.max()} |",
            "",
            "Mean rejected / chosen length ratio: "
            f"{(rejected / np.maximum(chosen, 1)).mean():.2f} "
            "(the paper's released VQA data: ~6; near 1 leaves no length shortcut).",
            "",
        ]
    if rejections is not None:
        lines += ["## Rejections", "", rejections, ""]
    lines += ["## Weights", "", weight_histogram(pairs), ""]
    reasons = Counter(d["reason"] for d in dropped)
    lines += ["## Left out", "", "| reason | count |", "|---|---:|"] + [
        f"| {r} | {n} |" for r, n in sorted(reasons.items())
    ]
    lines += ["", "## Examples", ""]
    for pair in pairs.slice(0, 5).to_pylist():
        lines += [
            f"- **{pair['pair_id']}** ({pair['pair_type']}, weight {pair['weight']:.3f}, {pair['error_type']})",
            f"  - prompt: {pair['prompt']}",
            f"  - chosen: {pair['chosen']} (`{pair['chosen_image']}`)",
            f"  - rejected: {pair['rejected']} (`{pair['rejected_image']}`)",
        ]
    return "\n".join(lines) + "\n"


def count_table(pairs: pa.Table, keys: tuple[str, str]) -> str:
    counted = pairs.group_by(list(keys), use_threads=False).aggregate([([], "count_all")]).to_pylist()
    header = [f"| {keys[0]} | {keys[1]} | pairs |", "|---|---|---:|"]
    ordered = sorted(counted, key=lambda row: (str(row[keys[0]]), str(row[keys[1]])))
    return "\n".join(header + [f"| {row[keys[0]]} | {row[keys[1]]} | {row['count_all']} |" for row in ordered])


def weight_histogram(pairs: pa.Table, bins: int = 10) -> str:
    """A text histogram per pair type: readable in the card, the terminal and the UI."""
    out = []
    for pair_type in sorted(pc.unique(pairs.column("pair_type")).to_pylist()):
        weights = pairs.filter(pc.equal(pairs.column("pair_type"), pair_type)).column("weight").to_numpy()
        low, high = weights.min(), weights.max()
        width = (high - low) / bins or 1.0
        hist = Counter(np.minimum(((weights - low) / width).astype(int), bins - 1).tolist())
        out.append(f"{pair_type} (n={len(weights)}, mean {weights.mean():.3f}):")
        out += [
            f"    {low + i * width:6.3f} | {'#' * hist[i]} {hist[i] or ''}".rstrip()
            for i in range(bins)
            if hist[i] or low != high
        ]
    return "```\n" + "\n".join(out) + "\n```" if out else "(no pairs)"
