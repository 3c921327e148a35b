"""The grounding experiment's report: per backbone and arm, mean ± std and a 95% interval over
seeds; paired comparisons across seeds for every claim; a plot; plain verdicts.

Apart from measure.py so that rewording the report never changes the measure stage's code
version (and so never recomputes the measures).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.grounding.arms import LABELS
from experiments.grounding.config import ExperimentConfig
from tasks.config import JudgeConfig

PERCENT = (
    "closed_accuracy",
    "off_answers",
    "forced_choice_accuracy",
    "counterfactual_accuracy",
    "counterfactual_forced",
)
NATS = ("text_displacement", "visual_displacement", "text_margin", "visual_margin")
METRICS = PERCENT + NATS
NAMES = {
    "closed_accuracy": "greedy accuracy",
    "off_answers": "off yes/no",
    "forced_choice_accuracy": "forced-choice accuracy",
    "counterfactual_accuracy": "counterfactual accuracy (greedy)",
    "counterfactual_forced": "counterfactual accuracy (forced choice)",
    "text_displacement": "Δ log p(chosen), text",
    "visual_displacement": "Δ log p(chosen), visual",
    "text_margin": "text margin",
    "visual_margin": "visual margin",
}
MMEDPO_ARMS = ("mmedpo", "mmedpo_anchor", "mmedpo_global", "mmedpo_unweighted", "mmedpo_rounds")
# (arm, baseline) pairs the report compares, seed by seed.
CLAIMS = (
    *((arm, "sft") for arm in MMEDPO_ARMS),
    *((arm, "dpo_text") for arm in MMEDPO_ARMS),
    ("dpo_text", "sft"),
    ("mmedpo_anchor", "mmedpo"),
    ("mmedpo", "mmedpo_global"),
    ("mmedpo", "mmedpo_unweighted"),
    ("mmedpo_rounds", "mmedpo"),
)
HEADLINE = ("counterfactual_accuracy", "counterfactual_forced")


def with_displacement(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its held-out chosen log-prob change from the same backbone and seed's SFT model."""
    before = {(r["backbone"], r["seed"]): r for r in rows if r["arm"] == "sft"}
    out = []
    for row in rows:
        start = before.get((row["backbone"], row["seed"]))
        extra = {}
        for kind in ("text", "visual"):
            key = f"{kind}_chosen_logp"
            extra[f"{kind}_displacement"] = row[key] - start[key] if start is not None else float("nan")
        out.append({**row, **extra})
    return out


def interval(values: Sequence[float]) -> dict[str, float] | None:
    """Mean, sample std and the 95% t-interval of the mean (None without a finite value)."""
    from scipy import stats

    finite = [v for v in values if v == v]
    if not finite:
        return None
    mean = statistics.fmean(finite)
    if len(finite) < 2:
        return {"mean": mean, "std": 0.0, "lo": mean, "hi": mean, "n": len(finite)}
    std = statistics.stdev(finite)
    half = float(stats.t.ppf(0.975, len(finite) - 1)) * std / math.sqrt(len(finite))
    return {"mean": mean, "std": std, "lo": mean - half, "hi": mean + half, "n": len(finite)}


def summarize(rows: Sequence[Mapping[str, Any]], backbone: str, arms: Sequence[str]) -> list[dict[str, Any]]:
    table = []
    for arm in arms:
        mine = [r for r in rows if r["backbone"] == backbone and r["arm"] == arm]
        found = {m: interval([r[m] for r in mine]) for m in (*METRICS, "steps")}
        for metric in PERCENT:  # a share's interval stops at 0 and 1, where a t interval of 3 seeds need not
            if found[metric] is not None:
                found[metric] |= {"lo": max(found[metric]["lo"], 0.0), "hi": min(found[metric]["hi"], 1.0)}
        table.append({"arm": arm, "seeds": len(mine), **found})
    return table


def paired(rows: Sequence[Mapping[str, Any]], backbone: str, arm: str, other: str, metric: str) -> dict | None:
    """``arm`` minus ``other`` seed by seed: the mean difference, its 95% interval, wins."""
    mine = {r["seed"]: r[metric] for r in rows if r["backbone"] == backbone and r["arm"] == arm}
    theirs = {r["seed"]: r[metric] for r in rows if r["backbone"] == backbone and r["arm"] == other}
    seeds = sorted(set(mine) & set(theirs))
    diffs = [mine[s] - theirs[s] for s in seeds if mine[s] == mine[s] and theirs[s] == theirs[s]]
    if not diffs:
        return None
    summary = interval(diffs)
    assert summary is not None
    return {**summary, "wins": sum(d > 0 for d in diffs), "losses": sum(d < 0 for d in diffs)}


def _pct(value: dict | None, metric: str) -> str:
    if value is None:
        return "-"
    scale, fmt = (100, "{:.1f}") if metric in PERCENT else (1, "{:+.2f}")
    mean, std, lo, hi = (scale * value[k] for k in ("mean", "std", "lo", "hi"))
    return f"{fmt.format(mean)} ± {abs(std):.1f} [{fmt.format(lo)}, {fmt.format(hi)}]".replace("+-", "-")


def beats(table: Sequence[Mapping[str, Any]], arm: str, others: Sequence[str], metric: str) -> bool:
    """Whether ``arm``'s 95% interval lies wholly above every other arm's."""
    by_arm = {row["arm"]: row for row in table}
    mine = by_arm.get(arm, {}).get(metric)
    if mine is None:
        return False
    return all(by_arm.get(o, {}).get(metric) is not None and mine["lo"] > by_arm[o][metric]["hi"] for o in others)


def verdict(rows: Sequence[Mapping[str, Any]], backbone: str, table: Sequence[Mapping[str, Any]]) -> list[str]:
    """Plain statements read off the numbers, whichever way they fall."""
    arms = [row["arm"] for row in table]
    lines = []
    for metric in HEADLINE:
        winners = [a for a in MMEDPO_ARMS if a in arms and beats(table, a, ["sft", "dpo_text"], metric)]
        if winners:
            lines.append(
                f"- **{NAMES[metric]}: "
                + ", ".join(LABELS[a] for a in winners)
                + " beat both SFT only and SFT + DPO (text pairs), with non-overlapping 95% intervals.**"
            )
        else:
            lines.append(
                f"- **{NAMES[metric]}: no MMedPO arm beat both SFT only and SFT + DPO (text pairs) with "
                "non-overlapping 95% intervals.**"
            )
            lines += what_remains(rows, backbone, table, metric)
    for arm, other in CLAIMS:
        if arm not in arms or other not in arms:
            continue
        for metric in (*HEADLINE, "closed_accuracy"):
            found = paired(rows, backbone, arm, other, metric)
            if found is None:
                continue
            if found["lo"] > 0:
                word = "above"
            elif found["hi"] < 0:
                word = "below"
            else:
                word = "not separable from"
            lines.append(
                f"- {NAMES[metric]}: {LABELS[arm]} is {word} {LABELS[other]}: paired difference "
                f"{100 * found['mean']:+.1f} points, 95% interval [{100 * found['lo']:+.1f}, {100 * found['hi']:+.1f}]"
                f", higher on {found['wins']} of {found['n']} seeds."
            )
    by_arm = {row["arm"]: row for row in table}
    for arm in arms:
        row = by_arm[arm]
        off, moved = row["off_answers"], row["text_displacement"]
        if off is not None and off["mean"] > 0.1:
            lines.append(
                f"- {LABELS[arm]}: {100 * off['mean']:.0f}% of its greedy answers are neither yes nor no (probability "
                "moved off both answers)."
            )
        for kind in ("text", "visual"):
            moved = row[f"{kind}_displacement"]
            if arm != "sft" and moved is not None and moved["hi"] < 0:
                lines.append(
                    f"- {LABELS[arm]}: the held-out chosen answers' log-probability fell ({kind} pairs: "
                    f"{moved['mean']:+.2f} nats, 95% interval [{moved['lo']:+.2f}, {moved['hi']:+.2f}]): likelihood "
                    "displacement."
                )
    return lines


def what_remains(
    rows: Sequence[Mapping[str, Any]], backbone: str, table: Sequence[Mapping[str, Any]], metric: str
) -> list[str]:
    """Why no MMedPO arm won on ``metric``, as measured: the best one's paired gaps to both
    baselines against the seed-to-seed spread, the room each baseline left, and the side effects (answers
    off yes/no, the held-out chosen answers' log-prob) that cost it."""
    by_arm = {row["arm"]: row for row in table}
    candidates = [a for a in MMEDPO_ARMS if a in by_arm and by_arm[a][metric] is not None]
    if not candidates or "sft" not in by_arm or by_arm["sft"][metric] is None:
        return []
    best = max(candidates, key=lambda a: by_arm[a][metric]["mean"])
    row, sft = by_arm[best], by_arm["sft"]
    gaps = []
    for other in ("sft", "dpo_text"):
        found = paired(rows, backbone, best, other, metric)
        if found is not None:
            gaps.append(
                f"{100 * found['mean']:+.1f} points over {LABELS[other]} (paired 95% interval "
                f"[{100 * found['lo']:+.1f}, {100 * found['hi']:+.1f}], higher on {found['wins']} of "
                f"{found['n']} seeds)"
            )
    rooms = [
        f"{LABELS[base]} scores {100 * by_arm[base][metric]['mean']:.1f}% (room left: "
        f"{100 * (1 - by_arm[base][metric]['mean']):.1f} points)"
        for base in ("sft", "dpo_text")
        if base in by_arm and by_arm[base][metric] is not None
    ]
    text = f"  Measured for the best MMedPO arm on it, {LABELS[best]}: {'; '.join(gaps)}. {'; '.join(rooms)}."
    off, moved = row["off_answers"], row["text_displacement"]
    if off is not None and sft["off_answers"] is not None:
        text += (
            f" Its greedy answers off yes/no: {100 * off['mean']:.1f}% (SFT {100 * sft['off_answers']['mean']:.1f}%)."
        )
    if moved is not None:
        text += f" Held-out chosen log-prob change, text pairs: {moved['mean']:+.2f} nats."
    return [text]


def judge_label(judge: JudgeConfig) -> str:
    if judge.kind == "rules":
        return f"{judge.name}: error type x the finding's clinical class"
    source = Path(judge.model_path).name if judge.model_path else judge.endpoint.model if judge.endpoint else judge.kind
    return f"{judge.name}: {source}, {judge.resolved_protocol} protocol"


def weight_histogram(weights: Sequence[tuple[str, float]]) -> list[str]:
    counts = Counter((kind, round(w, 3)) for kind, w in weights)
    lines = ["| pair type | weight | pairs |", "|---|---|---|"]
    lines += [f"| {kind} | {w:.3f} | {n} |" for (kind, w), n in sorted(counts.items())]
    return lines


def write_report(
    results: Mapping[str, Any],
    config: ExperimentConfig,
    prior_accuracy: float,
    seconds: tuple[float, float],
    machine: str,
) -> Path:
    """``seconds``: this invocation's wall time and the summed build time of every artifact it used
    (what a run from an empty store computes, orchestration overhead aside)."""
    rows = with_displacement(results["rows"])
    config.report.parent.mkdir(parents=True, exist_ok=True)
    plot = config.report.with_suffix(".png")
    tables = {b.name: summarize(rows, b.name, b.arms) for b in config.backbones}
    write_plot(tables, config, results["weights"], plot, prior_accuracy)
    lines = [
        "# Grounding experiment",
        "",
        "Does preference training push a model that answers from the text prior to answer from the image? Synthetic "
        "lesions on crops of the demo's real images (experiments/grounding/data.py); closed questions: presence "
        f'("Is there a mass?", the finding named drawn from {", ".join(config.data.findings)}) and left/right. '
        f"Training split: {100 * config.data.train_yes_rate:.0f}% 'yes'; val and test: "
        f"{100 * config.data.test_yes_rate:.0f}% (the prior flipped). Always answering the training prior scores "
        f"{100 * prior_accuracy:.1f}% on the test split.",
        "",
        "Every arm of a backbone starts from the same SFT checkpoint per seed and goes through the real flows "
        "(curate -> sft -> train -> evaluate, `mmedpo iterate` for 2 rounds). Cells: mean ± std [95% interval of the "
        "mean, t distribution; a percentage's interval cut at 0 and 100] over the seeds.",
        "",
        "- **greedy accuracy**: greedy answers to the test split's closed questions (evaluate flow); an answer "
        "neither yes nor no is wrong (their share: **off yes/no**). **forced choice**: the right one of 'yes' and "
        "'no' has the higher log-probability.",
        "- **counterfactual accuracy**: every test presence question about an image with a lesion, asked again "
        "about the same image with the lesion inpainted away (biharmonic inpainting of its box, "
        f"grown by {config.measure.inpaint_grow} px: a perturbation no training pair uses), whose right answer is "
        "'no'. A question counts only when both answers are right, so a model that answers the same whatever the "
        "image shows scores 0; greedy and forced-choice versions.",
        "- **Δ log p(chosen)** (displacement): mean log-probability of the held-out (val) pairs' chosen answers, "
        "trained model minus the same seed's SFT model (text pairs: the ground truth; visual pairs: the answer on "
        "the real image). Negative: training pushed the right answer down. **margins**: mean log p(chosen) - log "
        "p(rejected) on the same pairs (visual: the answer on the real vs the lesion-noised image).",
        "",
    ]
    for backbone in config.backbones:
        table = tables[backbone.name]
        chosen = results["chosen"].get(backbone.name, {})
        spent = results["seconds"].get(backbone.name, float("nan"))
        lines += [
            f"## Backbone: {backbone.label}",
            "",
            f"Seeds {', '.join(map(str, backbone.seeds))}; SFT {backbone.sft.epochs:g} epochs at lr "
            f"{backbone.sft.learning_rate:g} ({', '.join(backbone.sft.trainable)}); DPO: LoRA r "
            f"{backbone.train.lora_r}, alpha {backbone.train.lora_alpha}, dropout {backbone.train.lora_dropout:g}, "
            f"beta {backbone.train.beta:g}"
            f", {backbone.train.scheduler} with {100 * backbone.train.warmup_ratio:g}% warmup, "
            f"{backbone.train.batch_size} pairs a step, "
            + (
                f"{backbone.train.max_steps} steps"
                if backbone.train.max_steps > 0
                else f"{backbone.train.epochs:g} epochs"
            )
            + f"; anchor weight {backbone.anchor_coef:g}. Learning rates tried (seed {backbone.seeds[0]}, val split): "
            + ", ".join(f"{lr:g}" for lr in backbone.learning_rates)
            + "; chosen: "
            + ", ".join(f"{LABELS[a]} {lr:g}" for a, lr in chosen.items())
            + f". This backbone's artifacts took {results['built'][backbone.name] / 60:.1f} min to build (SFT, "
            f"training, evaluation, measures; this invocation's part: {spent / 60:.1f} min).",
            "",
            "| arm | " + " | ".join(NAMES[m] for m in METRICS) + " | steps |",
            "|---|" + "---|" * (len(METRICS) + 1),
        ]
        for row in table:
            steps = row["steps"]["mean"] if row["steps"] else 0
            lines.append(
                f"| {LABELS[row['arm']]} | " + " | ".join(_pct(row[m], m) for m in METRICS) + f" | {steps:.0f} |"
            )
        lines += ["", "### What the numbers say", "", *verdict(rows, backbone.name, table), ""]
    lines += [
        f"![per-arm metrics]({plot.name})",
        "",
        "## Pair weights",
        "",
        "The MMedPO set's training pairs. Text pairs: the judge panel "
        f"({', '.join(judge_label(j) for j in config.score.judges)}; {config.score.mode} mode), its raw score through "
        f"the {config.score.normalizer.kind} normalizer; visual pairs: the annotation's confidence through the same "
        "normalizer. The equal-weights arm gives every pair their mean, "
        f"{results['mean_weight']:.3f}, so it trains with the same step size and differs only in the relative "
        "weighting.",
        "",
        *weight_histogram(results["weights"]),
        "",
        "## Learning-rate sweep (validation split, first seed)",
        "",
        "Validation score: mean of greedy accuracy and counterfactual accuracy (greedy) on the val split. MMedPO's "
        "one-change variants (global noise, equal weights, 2 rounds) train at MMedPO's chosen rate, so the one "
        "change is all that differs.",
        "",
        "| backbone | arm | lr | val score | val greedy accuracy | val counterfactual (greedy) | val forced choice |",
        "|---|---|---|---|---|---|---|",
    ]
    for entry in results["sweep"]:
        lines.append(
            f"| {entry['backbone']} | {LABELS[entry['arm']]} | {entry['learning_rate']:g} | "
            f"{100 * entry['val_score']:.1f} | {100 * entry['closed_accuracy']:.1f} | "
            f"{100 * entry['counterfactual_accuracy']:.1f} | {100 * entry['forced_choice_accuracy']:.1f} |"
        )
    lines += [
        "",
        "## Per seed",
        "",
        "| backbone | arm | seed | lr | greedy acc. | off yes/no | forced choice | counterfactual (greedy) | "
        "counterfactual (forced) | Δ log p text | Δ log p visual | text margin | visual margin |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lr = f"{row['learning_rate']:g}" if row["learning_rate"] else "-"
        lines.append(
            f"| {row['backbone']} | {LABELS[row['arm']]} | {row['seed']} | {lr} | "
            + " | ".join(f"{100 * row[m]:.1f}" for m in PERCENT)
            + " | "
            + " | ".join(f"{row[m]:+.2f}" for m in NATS)
            + " |"
        )
    times = ", ".join(f"{name} {s / 60:.1f} min" for name, s in results["seconds"].items())
    dump = config.model_dump(mode="json", exclude={"store", "sets", "data_root", "report"})
    lines += [
        "",
        f"Run: `make experiment` on {machine}: this invocation {seconds[0] / 60:.1f} min ({times}); building its "
        f"artifacts from scratch {seconds[1] / 60:.1f} min (re-runs reuse the store). Config: `{json.dumps(dump)}`",
        "",
    ]
    config.report.write_text("\n".join(lines))
    return config.report


def write_plot(
    tables: Mapping[str, Sequence[Mapping[str, Any]]],
    config: ExperimentConfig,
    weights: Sequence[tuple[str, float]],
    path: Path,
    prior_accuracy: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (
        (["closed_accuracy", "forced_choice_accuracy"], "test accuracy (%)", 100),
        (["counterfactual_accuracy", "counterfactual_forced"], "counterfactual accuracy (%)", 100),
        (["text_displacement", "visual_displacement"], "Δ log p(chosen), val (nats)", 1),
    )
    figure, axes = plt.subplots(len(tables) + 1, 3, figsize=(15, 4 * (len(tables) + 1)), squeeze=False)
    for line, (name, table) in enumerate(tables.items()):
        names = [LABELS[row["arm"]].replace("SFT + ", "").replace(", ", "\n").replace(" + ", "\n+ ") for row in table]
        for column, (metrics, title, scale) in enumerate(panels):
            ax = axes[line][column]
            width = 0.8 / len(metrics)
            for offset, metric in enumerate(metrics):
                means = np.array([scale * row[metric]["mean"] if row[metric] else 0.0 for row in table])
                lows = np.array([scale * row[metric]["lo"] if row[metric] else 0.0 for row in table])
                highs = np.array([scale * row[metric]["hi"] if row[metric] else 0.0 for row in table])
                positions = np.arange(len(table)) + (offset - (len(metrics) - 1) / 2) * width
                ax.bar(positions, means, width, yerr=[means - lows, highs - means], capsize=3, label=NAMES[metric])
            ax.set_xticks(np.arange(len(table)), names, fontsize=7, rotation=30, ha="right")
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.axhline(0, color="black", linewidth=0.5)
            ax.legend(fontsize=6)
        axes[line][0].axhline(100 * prior_accuracy, color="red", linestyle="--", linewidth=1)
    ax = axes[-1][0]
    for kind in ("text", "visual"):
        values = [w for k, w in weights if k == kind]
        if values:
            ax.hist(values, bins=20, range=(0.75, 1.25), alpha=0.6, label=f"{kind} pairs")
    ax.set_title("MMedPO pair weights (train split)", fontsize=9)
    ax.legend(fontsize=7)
    for ax in axes[-1][1:]:
        ax.axis("off")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def prior_accuracy(samples: Sequence[Mapping[str, Any]], train_yes_rate: float) -> float:
    """Accuracy on the test split's closed questions of always giving the training split's majority answer."""
    majority = "yes" if train_yes_rate >= 0.5 else "no"
    closed = [s for s in samples if s["split"] == "test" and s["answer_type"] == "closed"]
    return sum(s["answer"].strip().lower() == majority for s in closed) / len(closed)
