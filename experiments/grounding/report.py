"""The grounding experiment's report: mean ± std over seeds per arm, a plot, plain verdicts.

Apart from tasks/experiment.py so that rewording the report never changes the measure
stage's code version (and so never recomputes the measures).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.grounding.arms import LABELS, REFERENCE_ARM
from experiments.grounding.config import ExperimentConfig
from experiments.grounding.measure import METRICS

# A share of off-vocabulary answers above this is called out in the verdict.
DRIFT = 0.1


def summarize(rows: Sequence[Mapping[str, Any]], arms: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds, per arm and metric."""
    table = []
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        entry: dict[str, Any] = {"arm": arm, "seeds": len(mine)}
        for metric in METRICS:
            values = [r[metric] for r in mine if r[metric] == r[metric]]  # NaN (no pairs of that kind) left out
            entry[metric] = (
                (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
            )
        table.append(entry)
    return table


def _cell(value: tuple[float, float] | None, percent: bool) -> str:
    if value is None:
        return "-"
    mean, std = value
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if percent else f"{mean:+.2f} ± {std:.2f}"


def verdict(table: Sequence[Mapping[str, Any]]) -> list[str]:
    """Plain statements read off the table, whichever way the numbers fall."""
    by_arm = {row["arm"]: row for row in table}
    lines = []
    if REFERENCE_ARM not in by_arm:
        return lines
    ours = by_arm[REFERENCE_ARM]
    for metric, name in (
        ("closed_accuracy", "test accuracy"),
        ("forced_choice_accuracy", "yes/no forced choice"),
        ("image_sensitivity", "image sensitivity"),
    ):
        if ours[metric] is None:
            continue
        mean, std = ours[metric]
        for arm, row in by_arm.items():
            if arm == REFERENCE_ARM or row[metric] is None:
                continue
            other, other_std = row[metric]
            gap = mean - other
            spread = max(std, other_std)
            if abs(gap) <= spread:
                word = "no clear difference from"
            else:
                word = "above" if gap > 0 else "below"
            lines.append(
                f"- {name}: {LABELS[REFERENCE_ARM]} {100 * mean:.1f}% is {word} {LABELS[arm]} {100 * other:.1f}% (gap "
                f"{100 * gap:+.1f} points, larger std {100 * spread:.1f})."
            )
    for arm, row in by_arm.items():
        if row["off_answers"] is not None and row["off_answers"][0] > DRIFT:
            lines.append(
                f"- {LABELS[arm]}: {100 * row['off_answers'][0]:.0f}% of its greedy test answers are neither yes nor "
                "no - preference "
                "training moved probability off both answers; accuracy counts them wrong, the forced choice does not."
            )
    return lines


def write_report(
    rows: Sequence[Mapping[str, Any]],
    config: ExperimentConfig,
    prior_accuracy: float,
    seconds: tuple[float, float],
    machine: str,
) -> Path:
    """``seconds``: this invocation's wall time and the summed build time of every artifact
    it used (what a run from an empty store computes, orchestration overhead aside)."""
    table = summarize(rows, config.arms)
    plot = config.report.with_suffix(".png")
    config.report.parent.mkdir(parents=True, exist_ok=True)
    write_plot(table, plot, prior_accuracy)
    lines = [
        "# Grounding experiment",
        "",
        "Does preference training push a model that answers from the text prior to answer from the image?",
        f"Synthetic lesions on crops of the demo's real images (tasks/grounding_data.py); closed questions "
        f"(presence, left/right). Training split: {100 * config.data.train_yes_rate:.0f}% 'yes'; val and test: "
        f"{100 * config.data.test_yes_rate:.0f}% (the prior flipped). A model answering from the prior scores "
        f"{100 * prior_accuracy:.1f}% on the test split.",
        "",
        f"Every arm starts from the same SFT checkpoint per seed (TRL SFTTrainer, {config.sft.epochs:g} epochs, "
        f"lr {config.sft.learning_rate:g} {config.sft.scheduler}) and goes through the real flows "
        "(curate -> train -> evaluate). Seeds: "
        + ", ".join(map(str, config.seeds))
        + f" (mean ± std over {len(config.seeds)}).",
        "",
        "| arm | closed accuracy, test (%) | answers neither yes nor no (%) | yes/no forced choice, test (%) | image "
        "sensitivity (%) | text margin, val | visual margin, val |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table:
        cells = [
            _cell(row["closed_accuracy"], True),
            _cell(row["off_answers"], True),
            _cell(row["forced_choice_accuracy"], True),
            _cell(row["image_sensitivity"], True),
            _cell(row["text_margin"], False),
            _cell(row["visual_margin"], False),
        ]
        lines.append(f"| {LABELS[row['arm']]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"![per-arm metrics]({plot.name})",
        "",
        "- **closed accuracy**: greedy answers on the flipped-prior test split (evaluate flow); an answer that is "
        "neither yes nor no counts as wrong (their share: next column).",
        "- **yes/no forced choice**: share of the same questions where the right answer has the higher "
        "log-probability of 'yes' and 'no' (grounding of the choice, whatever the greedy answer drifted to).",
        "- **image sensitivity**: share of test answers (questions about an image with a lesion) that change when "
        f"the lesion's box is diffusion-noised (k={config.measure.noise_k}).",
        "- **margins**: mean log p(chosen) - log p(rejected) on the held-out val pairs of the MMedPO set (text: "
        "ground truth vs hallucinated answer; visual: the answer on the real vs the lesion-noised image). Higher = "
        "prefers the truth / the real image.",
        "",
        "## What the numbers say",
        "",
        *(verdict(table) or ["- (no MMedPO arm in this run)"]),
        "",
        "## Per seed",
        "",
        "| arm | seed | closed accuracy (%) | neither yes nor no (%) | forced choice (%) | image sensitivity (%) | "
        "text margin | visual margin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {LABELS[row['arm']]} | {row['seed']} | {100 * row['closed_accuracy']:.1f} | "
            f"{100 * row['off_answers']:.1f} | {100 * row['forced_choice_accuracy']:.1f} | "
            f"{100 * row['image_sensitivity']:.1f} | "
            f"{row['text_margin']:+.2f} | {row['visual_margin']:+.2f} |"
        )
    lines += [
        "",
        f"Run: `make experiment` on {machine}: this invocation {seconds[0] / 60:.1f} min; building its artifacts from "
        f"scratch {seconds[1] / 60:.1f} min (re-runs reuse the store). Config: "
        f"`{json.dumps(config.model_dump(mode='json', exclude={'store', 'sets', 'data_root', 'report'}))}`",
        "",
    ]
    config.report.write_text("\n".join(lines))
    return config.report


def write_plot(table: Sequence[Mapping[str, Any]], path: Path, prior_accuracy: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(14, 4))
    names = [LABELS[row["arm"]].replace("SFT + ", "").replace(", ", "\n") for row in table]
    panels = (
        (axes[0], ["closed_accuracy", "forced_choice_accuracy"], "test accuracy (%)", 100),
        (axes[1], ["image_sensitivity"], "image sensitivity (%)", 100),
        (axes[2], ["text_margin", "visual_margin"], "val log-prob margin", 1),
    )
    for ax, metrics, title, scale in panels:
        width = 0.8 / len(metrics)
        for offset, metric in enumerate(metrics):
            means = [scale * row[metric][0] if row[metric] else 0.0 for row in table]
            stds = [scale * row[metric][1] if row[metric] else 0.0 for row in table]
            positions = np.arange(len(table)) + (offset - (len(metrics) - 1) / 2) * width
            ax.bar(positions, means, width, yerr=stds, capsize=3, label=metric.replace("_", " "))
        ax.set_xticks(np.arange(len(table)), names, fontsize=7)
        ax.set_title(title)
        ax.axhline(0, color="black", linewidth=0.5)
    axes[0].axhline(100 * prior_accuracy, color="red", linestyle="--", linewidth=1, label="text prior")
    axes[0].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def prior_accuracy(samples: Sequence[Mapping[str, Any]], train_yes_rate: float) -> float:
    """Accuracy on the test split's closed questions of always giving the training split's majority answer."""
    majority = "yes" if train_yes_rate >= 0.5 else "no"
    closed = [s for s in samples if s["split"] == "test" and s["answer_type"] == "closed"]
    return sum(s["answer"].strip().lower() == majority for s in closed) / len(closed)
