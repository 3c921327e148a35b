"""The grounding experiment's report, written from the per-seed results file alone (so ``--report-only``
regenerates it without training): the goal, the pilot, one table per measure, the pre-registered
contrasts with Holm-adjusted intervals, a short verdict.

Apart from measure.py so that rewording the report never changes the measure stage's code version.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from experiments.grounding.arms import LABELS
from experiments.grounding.config import ARMS, CONTRASTS, TUNED_BY, ExperimentConfig
from experiments.grounding.stats import holm, paired
from tasks.store.files import write_text_atomic

PRIMARY = "relocation"
# (measure, what it is); shares are reported in percent, log-probabilities in nats.
MEASURES = (
    (PRIMARY, "Relocation twin, primary: both answers right, mean of greedy and forced choice"),
    ("relocation_greedy", "Relocation twin, greedy"),
    ("relocation_forced", "Relocation twin, forced choice"),
    ("removal_invariance", "Distractor-removal invariance, greedy (same yes/no answer without the distractor)"),
    ("removal_invariance_forced", "Distractor-removal invariance, forced choice"),
    ("quadrant_exact", "Quadrant, exact match (open question)"),
    ("closed_accuracy", "Closed accuracy, greedy"),
    ("accuracy_gold_yes", "Closed accuracy, greedy, gold 'yes' (lesion left: the training prior)"),
    ("accuracy_gold_no", "Closed accuracy, greedy, gold 'no' (against the prior)"),
    ("forced_gold_yes", "Closed accuracy, forced choice, gold 'yes'"),
    ("forced_gold_no", "Closed accuracy, forced choice, gold 'no'"),
    ("off_answers", "Greedy answers neither yes nor no"),
    ("displacement", "Displacement: mean log p(gold answer) minus the same seed's A0, nats"),
)
NATS = {"displacement", "gold_logp"}
ALPHA = 0.05


def save_results(path: Path, results: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(results, indent=1, sort_keys=True) + "\n")


def load_results(path: Path) -> dict[str, Any]:
    try:
        results = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no results file (run `mmedpo experiment` first)") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON ({error})") from None
    for field in ("pilot", "rows", "backbone"):
        if field not in results:
            raise ValueError(f"{path}: results lack the field {field!r}")
    return results


def with_displacement(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each row with its mean log p(gold) minus that of the same seed's SFT model."""
    start = {r["seed"]: r["gold_logp"] for r in rows if r["arm"] == "sft"}
    return [{**r, "displacement": r["gold_logp"] - start.get(r["seed"], float("nan"))} for r in rows]


def short(arm: str) -> str:
    """ "A2" for "A2 text + local visual pairs"."""
    return LABELS[arm].split()[0]


def scale(measure: str) -> float:
    return 1.0 if measure in NATS else 100.0


def measure_table(rows: Sequence[Mapping[str, Any]], measure: str, seeds: Sequence[int]) -> list[str]:
    """Arms down, seeds across, then the mean and its 95% t interval over seeds."""
    unit = scale(measure)
    lines = [
        "| arm | " + " | ".join(f"seed {s}" for s in seeds) + " | mean [95% CI] |",
        "|---" * (len(seeds) + 2) + "|",
    ]
    for arm in ARMS:
        values = {r["seed"]: unit * r[measure] for r in rows if r["arm"] == arm}
        if not values:
            continue
        cells = [_num(values.get(s, float("nan"))) for s in seeds]
        finite = [v for v in values.values() if v == v]
        summary = paired(finite)
        lo, hi = summary.interval(ALPHA)
        lines.append(f"| {LABELS[arm]} | " + " | ".join(cells) + f" | {_num(summary.mean)} [{_num(lo)}, {_num(hi)}] |")
    return lines


def contrasts(rows: Sequence[Mapping[str, Any]], measure: str) -> list[dict[str, Any]]:
    """The pre-registered contrasts on ``measure``: per-seed paired t, Holm over the three."""
    found = []
    for arm, other in CONTRASTS:
        mine = {r["seed"]: r[measure] for r in rows if r["arm"] == arm}
        theirs = {r["seed"]: r[measure] for r in rows if r["arm"] == other}
        seeds = sorted(set(mine) & set(theirs))
        diffs = [scale(measure) * (mine[s] - theirs[s]) for s in seeds if mine[s] == mine[s] and theirs[s] == theirs[s]]
        found.append({"arm": arm, "other": other, "test": paired(diffs), "wins": sum(d > 0 for d in diffs)})
    for row, adjusted in zip(found, holm([r["test"].p for r in found], ALPHA)):
        lo, hi = row["test"].interval(adjusted.alpha)
        row.update(adjusted=adjusted, lo=lo, hi=hi)
    return found


def contrast_table(found: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = [
        "| contrast | mean difference, points | raw p | Holm p | Holm-adjusted interval | higher on |",
        "|---|---|---|---|---|---|",
    ]
    for row in found:
        test, adjusted = row["test"], row["adjusted"]
        lines.append(
            f"| {short(row['arm'])} − {short(row['other'])} | {_num(test.mean, signed=True)} | {_p(test.p)} | "
            f"{_p(adjusted.p)} | [{_num(row['lo'], signed=True)}, {_num(row['hi'], signed=True)}] "
            f"({100 * (1 - adjusted.alpha):.1f}%) | {row['wins']} of {test.n} seeds |"
        )
    return lines


def verdict(
    config: ExperimentConfig, results: Mapping[str, Any], found: Sequence[Mapping[str, Any]] | None
) -> list[str]:
    """At most 10 lines, read off the numbers whichever way they fall."""
    pilot = results["pilot"]
    lines = [
        f"- Pilot (tuning seed {pilot['seed']}, val split, lr {pilot['learning_rate']:g}): A2 − A3 on the relocation "
        f"twin {pilot['gap_points']:+.1f} points (stop rule: |gap| < {config.pilot_stop_points:g})."
    ]
    if results.get("stopped"):
        lines.append(
            f"- **Stopped at the pilot: |A2 − A3| = {abs(pilot['gap_points']):.1f} < {config.pilot_stop_points:g} "
            "points. Noising the lesion did not separate from noising a same-size region over the distractor on the "
            "tuning seed, so no test seed was run; the goal is not shown.**"
        )
        return lines
    if found is None:
        lines.append("- Pilot only: no test seed was run, so no contrast is tested and the goal is not assessed.")
        return lines
    for row in found:
        word = "separated from 0" if row["adjusted"].rejected else "not separated from 0"
        lines.append(
            f"- {short(row['arm'])} − {short(row['other'])}: {_num(row['test'].mean, signed=True)} points, "
            f"Holm-adjusted interval [{_num(row['lo'], signed=True)}, {_num(row['hi'], signed=True)}]: {word} "
            f"(alpha {ALPHA:g}, family of 3; higher on {row['wins']} of {row['test'].n} seeds)."
        )
    lines.append(from_the_sft(results["rows"]))
    sham = found[0]
    met = sham["test"].mean >= config.goal_points and sham["lo"] > 0
    lines.append(
        f"- **Goal (A2 − A3 ≥ {config.goal_points:g} points with the adjusted interval above 0): "
        f"{'met' if met else 'not met'}** ({_num(sham['test'].mean, signed=True)} points, lower bound "
        f"{_num(sham['lo'], signed=True)})."
    )
    return lines


def from_the_sft(rows: Sequence[Mapping[str, Any]]) -> str:
    """Where DPO took each arm from its SFT start (A0), on the primary measure's seed means: a contrast
    between arms that all fell far below A0 says less about what any of them learned than one above it."""
    means = {arm: 100 * float(np.mean([r[PRIMARY] for r in rows if r["arm"] == arm])) for arm in ARMS}
    trained = [arm for arm in ARMS if arm != "sft"]
    below = sum(means[arm] < means["sft"] for arm in trained)
    listed = ", ".join(f"{short(arm)} {means[arm]:.1f}" for arm in trained)
    return (
        f"- From the SFT start (A0, mean {means['sft']:.1f} on the primary measure): {listed}; "
        f"{below} of {len(trained)} trained arms below A0."
    )


def write_report(results: Mapping[str, Any], config: ExperimentConfig) -> None:
    rows = with_displacement(results["rows"])
    seeds = sorted({r["seed"] for r in rows})
    found = contrasts(rows, PRIMARY) if len(seeds) >= 2 else None
    backbone = config.backbone
    lines = [
        "# Grounding experiment: does noising the lesion, and not just any region, teach the model to look?",
        "",
        "Design and data: [experiments/grounding/README.md](../experiments/grounding/README.md). Backbone: "
        f"{backbone.label}. Raw per-seed results: `{config.results}`; this page is written from them "
        "(`mmedpo experiment --report-only`).",
        "",
        f"**Goal, stated before running:** A2 − A3 ≥ {config.goal_points:g} points on the relocation twin (primary "
        "measure) with its Holm-adjusted interval above 0. The pilot on the tuning seed comes first; the run stops "
        f"there when |A2 − A3| < {config.pilot_stop_points:g} points.",
        "",
        "## Verdict",
        "",
        *verdict(config, results, found),
        "",
        *pilot_section(results),
    ]
    if found is not None:
        lines += ["## Pre-registered contrasts (primary measure, per-seed paired t(n−1), Holm over the three)", ""]
        lines += [*contrast_table(found), ""]
        for measure in ("relocation_greedy", "relocation_forced"):
            lines += [f"Secondary, {measure.replace('_', ' ')} (Holm within the measure):", ""]
            lines += [*contrast_table(contrasts(rows, measure)), ""]
        lines += [f"## Measures on the test split ({len(seeds)} seeds, lr {results['pilot']['learning_rate']:g})", ""]
        for measure, title in MEASURES:
            lines += [f"### {title}", "", *measure_table(rows, measure, seeds), ""]
    lines += [*setup_section(results, config), ""]
    config.report.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(config.report, "\n".join(lines))


def pilot_section(results: Mapping[str, Any]) -> list[str]:
    pilot = results["pilot"]
    columns = [m for m, _ in MEASURES if m != "displacement"]
    lines = [
        f"## Pilot: tuning seed {pilot['seed']}, validation split",
        "",
        "Learning rates tried, scored by the mean val relocation score of "
        + " and ".join(LABELS[a] for a in TUNED_BY)
        + ": "
        + ", ".join(f"{float(r):g}: {100 * s:.1f}" for r, s in pilot["scores"].items())
        + f"; chosen {pilot['learning_rate']:g} (every arm trains at it).",
        "",
        "Columns: the measures' names in the results file (see the tables below for what each is).",
        "",
        "| arm | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for arm in ARMS:
        if arm in pilot["arms"]:
            row = pilot["arms"][arm]
            lines.append(f"| {LABELS[arm]} | " + " | ".join(_num(100 * row[m]) for m in columns) + " |")
    return [*lines, ""]


def setup_section(results: Mapping[str, Any], config: ExperimentConfig) -> list[str]:
    backbone, data = config.backbone, config.data
    seconds = results.get("seconds", {})
    pairs = "; ".join(
        f"{LABELS[a]}: " + ", ".join(f"{n} {k}" for k, n in counts.items()) for a, counts in results["pairs"].items()
    )
    train = backbone.train
    return [
        "## Setup",
        "",
        f"Data: {data.n_train} training, {data.n_val} val, {data.n_test} test images of {data.image_size} px, each "
        f"asked both questions; lesions left in {100 * data.train_left_rate:.0f}% of training and "
        f"{100 * data.test_left_rate:.0f}% of val/test images. Training pairs: {pairs}. Every arm: "
        f"{train.max_steps} steps of {train.batch_size} pairs, LoRA r {train.lora_r}, beta {train.beta}, cosine, "
        f"every pair weight 1, from the same seed's SFT checkpoint ({backbone.sft.epochs:g} epochs at "
        f"{backbone.sft.learning_rate:g}). Tuning seed {backbone.tuning_seed}; test seeds "
        f"{', '.join(map(str, backbone.seeds))}.",
        "",
        f"Time on {results.get('machine', 'this machine')}: this invocation {_minutes(seconds.get('this_run'))} "
        f"({results.get('workers', 1)} worker processes, {results.get('threads', 1)} torch thread each); the "
        f"artifacts it used took {_minutes(seconds.get('empty_store'))} to build (what an empty store spends on "
        "this much of the run)."
        + (
            ""
            if len({r["seed"] for r in results["rows"]}) == len(backbone.seeds)
            else " The whole run from an empty store in one process, **estimated** from these artifacts' mean build "
            f"times per stage (evaluation taken as long as a measure): {_minutes(full_run_seconds(seconds, backbone))}."
        ),
    ]


def full_run_seconds(seconds: Mapping[str, Any], backbone: Any) -> float | None:
    """What the pilot and every test seed would take from an empty store in one process, at the mean build
    time of each stage's artifacts so far: curation as measured, the tower's pretraining and the SFT once per
    seed, the sweep's and every seed's training, a measure per trained or SFT model, an evaluation per test
    model."""
    stages = seconds.get("by_stage") or {}
    if not all(stage in stages for stage in ("sft", "train", "measure")):
        return None

    def each(stage: str) -> float:
        return stages[stage]["seconds"] / max(stages[stage]["count"], 1) if stage in stages else 0.0

    per_seed = ("pretrain", "sft", "train", "measure", "evaluate")
    seeds, rates = len(backbone.seeds), len(backbone.learning_rates)
    curation = sum(v["seconds"] for k, v in stages.items() if k not in per_seed)
    trained = len(TUNED_BY) * rates + 2 + 4 * seeds
    evaluation = each("evaluate") if "evaluate" in stages else each("measure")
    return (
        curation
        + (each("pretrain") + each("sft")) * (1 + seeds)
        + each("train") * trained
        + each("measure") * (trained + 1 + seeds)
        + evaluation * 5 * seeds
    )


def _num(value: float | None, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def _p(value: float) -> str:
    return "-" if value != value else (f"{value:.3f}" if value >= 0.001 else "<0.001")


def _minutes(value: float | None) -> str:
    return "-" if value is None else f"{value / 60:.1f} min"
