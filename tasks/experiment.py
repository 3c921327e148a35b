"""The grounding experiment's pieces: run configs per arm, the measures, the report.

Arms differ only in how their preference set is curated (flows/experiment.py composes
them): ``sft`` trains nothing after SFT; ``dpo_text`` has text pairs only (plain DPO on
hallucinated answers); ``mmedpo`` adds the lesion-noised visual pairs, weighted by the
judged score; ``mmedpo_global`` noises the whole image instead of the lesion;
``mmedpo_unweighted`` gives every pair weight 1.

Measures (stage ``measure``, one artifact per model): closed accuracy on the flipped-prior
test split (from the evaluate artifact), image sensitivity (share of test answers that change
when the lesion's box is diffusion-noised at test time) and the mean chosen - rejected
log-probability margin of held-out (val) pairs, text and visual separately.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from prefect import task

from tasks import schemas, ui
from tasks.config import (
    AssembleConfig,
    EvaluateConfig,
    ExperimentConfig,
    HallucinateConfig,
    IngestConfig,
    MeasureConfig,
    NoiseConfig,
    NormalizerConfig,
    RunConfig,
    ScoreConfig,
    SourceConfig,
)
from tasks.evaluate import adapter_dir, load_metrics, load_predictions
from tasks.noise import alpha_bar, noise_array, sample_seed
from tasks.imaging import load_array, save_array
from tasks.sets import load_pairs
from tasks.store import ArtifactStore, Keyed, Manifest, code_version, safe_stem, stage_task_options

STAGE = "measure"
CODE = code_version(__name__, "models.vlm", "tasks.noise")

LABELS = {
    "sft": "SFT only",
    "dpo_text": "SFT + DPO (text pairs)",
    "mmedpo": "SFT + MMedPO",
    "mmedpo_global": "SFT + MMedPO, global noise",
    "mmedpo_unweighted": "SFT + MMedPO, no weights",
}
# The arm whose curated set (text + local visual pairs) holds the held-out pairs every arm's margins are measured on.
REFERENCE_ARM = "mmedpo"
METRICS = ("closed_accuracy", "off_answers", "forced_choice_accuracy", "image_sensitivity", "text_margin", "visual_margin")


def base_run_config(config: ExperimentConfig, source: Path) -> RunConfig:
    """The curation every arm shares; the arms change one section each."""
    return RunConfig(
        name=config.name,
        store=config.store,
        sets=config.sets,
        ingest=IngestConfig(sources=[SourceConfig(format="jsonl", root=source, name="grounding")]),
        # val needs rejections too: its pairs are the held-out margins.
        hallucinate=HallucinateConfig(splits=["train", "val"]),
        # Train and test crops come from the same few background images: the near-duplicate
        # check would drop most of the training set as leakage.
        assemble=AssembleConfig(near_duplicate_bits=None),
        train=config.train,
        evaluate=EvaluateConfig(meteor=False, max_new_tokens=4, batch_size=config.measure.batch_size, examples=4),
    )


def arm_config(base: RunConfig, arm: str) -> RunConfig:
    if arm in ("sft", REFERENCE_ARM):
        update: dict[str, Any] = {}
    elif arm == "dpo_text":
        update = {"assemble": base.assemble.model_copy(update={"visual_pairs": False})}
    elif arm == "mmedpo_global":
        update = {"noise": base.noise.model_copy(update={"mode": "global"})}
    elif arm == "mmedpo_unweighted":
        update = {"score": base.score.model_copy(update={"normalizer": NormalizerConfig(kind="paper", anchor=1.0, gain=0.0)})}
    else:
        raise ValueError(f"unknown arm {arm!r}")
    return base.model_copy(update={**update, "name": f"{base.name}-{arm.replace('_', '-')}"})


def measure(
    store: ArtifactStore, config: MeasureConfig, ingest: Manifest, assemble: Manifest, sft: Manifest, evaluate: Manifest, train: Manifest | None = None
) -> Manifest:
    inputs: dict[str, Keyed] = {"ingest": ingest, "assemble": assemble, "sft": sft, "evaluate": evaluate}
    if train is not None:
        inputs["train"] = train
    return store.run(STAGE, CODE, config, inputs, lambda out: build_measures(out, config, ingest, assemble, sft, evaluate, train))


def build_measures(
    out: Path, config: MeasureConfig, ingest: Manifest, assemble: Manifest, sft: Manifest, evaluate: Manifest, train: Manifest | None
) -> dict[str, float]:
    from models import vlm
    from tasks.sft import model_dir

    model = vlm.load(model_dir(sft), device="cpu")
    if train is not None:
        model = vlm.apply_adapter(model, adapter_dir(train))
    samples = schemas.read_parquet(ingest.file("samples.parquet"), schemas.SAMPLES).to_pylist()
    result: dict[str, float] = {"closed_accuracy": closed_accuracy(load_metrics(evaluate)), "off_answers": off_answers(load_predictions(evaluate))}
    test = [s for s in samples if s["split"] == "test"]
    result.update(forced_choice(model, test))
    result.update(image_sensitivity(model, test, config, out / "noised"))
    result.update(pair_margins(model, load_pairs(Path(assemble.path), config.margin_split).to_pylist()))
    (out / "measures.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


def closed_accuracy(metrics: Mapping[str, Any]) -> float:
    entries = [entry for entry in metrics["datasets"].values() if entry.get("n_closed")]
    total = sum(entry["n_closed"] for entry in entries)
    return sum(entry["closed_accuracy"] * entry["n_closed"] for entry in entries) / total


def off_answers(predictions: Sequence[Mapping[str, Any]]) -> float:
    """Share of closed test answers that start with neither yes nor no (generation drift)."""
    closed = [p for p in predictions if p["answer_type"] == "closed"]
    return sum(first_word(p["prediction"] or "") not in ("yes", "no") for p in closed) / len(closed) if closed else float("nan")


def forced_choice(model: Any, samples: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Share of closed yes/no test questions where the model gives the right answer the
    higher log-probability of the two: whether it grounds its choice, even when its greedy
    answer has drifted off the two words."""
    from models import vlm

    closed = [s for s in samples if s["answer_type"] == "closed" and s["answer"].strip().lower() in ("yes", "no")]
    right = []
    for sample in closed:
        truth = sample["answer"].strip().lower()
        other = "no" if truth == "yes" else "yes"
        right.append(vlm.answer_logprob(model, sample["question"], truth, sample["image_path"]) > vlm.answer_logprob(model, sample["question"], other, sample["image_path"]))
    return {"forced_choice_accuracy": float(np.mean(right)) if right else float("nan")}


def lesion_noised(sample: Mapping[str, Any], config: MeasureConfig) -> np.ndarray:
    """The sample's image with the inside of its boxes diffusion-noised to step ``noise_k``."""
    pixels = load_array(sample["image_path"])
    weight = np.zeros(pixels.shape[:2], dtype=np.float32)
    for x0, y0, x1, y1 in sample["boxes"]:
        weight[max(int(y0), 0) : int(y1), max(int(x0), 0) : int(x1)] = 1.0
    return noise_array(pixels, weight, alpha_bar(NoiseConfig(k=config.noise_k)), sample_seed(sample["sample_id"], config.noise_seed))


def image_sensitivity(model: Any, samples: Sequence[Mapping[str, Any]], config: MeasureConfig, folder: Path) -> dict[str, float]:
    """Share of closed test answers that change when the lesion is noised away (samples
    without a lesion have nothing to noise and are counted apart)."""
    from models import vlm

    chosen = [s for s in samples if s["answer_type"] == "closed" and s["boxes"]]
    folder.mkdir(parents=True, exist_ok=True)
    noised = []
    for sample in chosen:
        path = folder / f"{safe_stem(sample['sample_id'])}.png"
        save_array(lesion_noised(sample, config), path)
        noised.append(str(path))
    settings = vlm.GenerationSettings(max_new_tokens=3, batch_size=config.batch_size)
    questions = [s["question"] for s in chosen]
    before = vlm.generate(model, questions, [s["image_path"] for s in chosen], settings)
    after = vlm.generate(model, questions, noised, settings)
    changed = [first_word(a[0]) != first_word(b[0]) for a, b in zip(before, after)]
    return {
        "image_sensitivity": float(np.mean(changed)) if changed else float("nan"),
        "sensitivity_samples": float(len(changed)),
        "sensitivity_skipped_no_lesion": float(sum(s["answer_type"] == "closed" and not s["boxes"] for s in samples)),
    }


def first_word(text: str) -> str:
    words = text.lower().replace(".", " ").replace(",", " ").split()
    return words[0] if words else ""


def pair_margins(model: Any, pairs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean log p(chosen) - log p(rejected) per pair type: positive = the model prefers the
    ground truth (text) or the answer on the real image over the noised one (visual)."""
    from models import vlm

    found: dict[str, list[float]] = {"text": [], "visual": []}
    for pair in pairs:
        chosen = vlm.answer_logprob(model, pair["prompt"], pair["chosen"], pair["chosen_image"])
        rejected = vlm.answer_logprob(model, pair["prompt"], pair["rejected"], pair["rejected_image"])
        found.setdefault(pair["pair_type"], []).append(chosen - rejected)
    result = {}
    for kind, margins in found.items():
        result[f"{kind}_margin"] = float(np.mean(margins)) if margins else float("nan")
        result[f"{kind}_margin_pairs"] = float(len(margins))
    return result


@task(**stage_task_options(STAGE, CODE))
def measure_task(
    store_root: str, config: MeasureConfig, ingest: Manifest, assemble: Manifest, sft: Manifest, evaluate: Manifest, train: Manifest | None = None
) -> Manifest:
    manifest = measure(ArtifactStore(store_root), config, ingest, assemble, sft, evaluate, train)
    ui.manifest_markdown(manifest)
    return manifest


# --- report ---------------------------------------------------------------------------


def summarize(rows: Sequence[Mapping[str, Any]], arms: Sequence[str]) -> list[dict[str, Any]]:
    """Mean and sample standard deviation over seeds, per arm and metric."""
    table = []
    for arm in arms:
        mine = [r for r in rows if r["arm"] == arm]
        entry: dict[str, Any] = {"arm": arm, "seeds": len(mine)}
        for metric in METRICS:
            values = [r[metric] for r in mine if r[metric] == r[metric]]  # NaN (no pairs of that kind) left out
            entry[metric] = (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0) if values else None
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
    for metric, name in (("closed_accuracy", "test accuracy"), ("forced_choice_accuracy", "yes/no forced choice"), ("image_sensitivity", "image sensitivity")):
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
            lines.append(f"- {name}: {LABELS[REFERENCE_ARM]} {100 * mean:.1f}% is {word} {LABELS[arm]} {100 * other:.1f}% (gap {100 * gap:+.1f} points, larger std {100 * spread:.1f}).")
    return lines


def write_report(
    rows: Sequence[Mapping[str, Any]], config: ExperimentConfig, prior_accuracy: float, seconds: tuple[float, float], machine: str
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
        "(curate -> train -> evaluate). Seeds: " + ", ".join(map(str, config.seeds)) + f" (mean ± std over {len(config.seeds)}).",
        "",
        "| arm | closed accuracy, test (%) | answers neither yes nor no (%) | yes/no forced choice, test (%) | image sensitivity (%) | text margin, val | visual margin, val |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in table:
        cells = [_cell(row["closed_accuracy"], True), _cell(row["off_answers"], True), _cell(row["forced_choice_accuracy"], True), _cell(row["image_sensitivity"], True), _cell(row["text_margin"], False), _cell(row["visual_margin"], False)]
        lines.append(f"| {LABELS[row['arm']]} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"![per-arm metrics]({plot.name})",
        "",
        "- **closed accuracy**: greedy answers on the flipped-prior test split (evaluate flow); an answer that is neither yes nor no counts as wrong (their share: next column).",
        "- **yes/no forced choice**: share of the same questions where the right answer has the higher log-probability of 'yes' and 'no' (grounding of the choice, whatever the greedy answer drifted to).",
        f"- **image sensitivity**: share of test answers (questions about an image with a lesion) that change when the lesion's box is diffusion-noised (k={config.measure.noise_k}).",
        "- **margins**: mean log p(chosen) - log p(rejected) on the held-out val pairs of the MMedPO set (text: ground truth vs hallucinated answer; visual: the answer on the real vs the lesion-noised image). Higher = prefers the truth / the real image.",
        "",
        "## What the numbers say",
        "",
        *(verdict(table) or ["- (no MMedPO arm in this run)"]),
        "",
        "## Per seed",
        "",
        "| arm | seed | closed accuracy (%) | neither yes nor no (%) | forced choice (%) | image sensitivity (%) | text margin | visual margin |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {LABELS[row['arm']]} | {row['seed']} | {100 * row['closed_accuracy']:.1f} | {100 * row['off_answers']:.1f} | {100 * row['forced_choice_accuracy']:.1f} | {100 * row['image_sensitivity']:.1f} | "
            f"{row['text_margin']:+.2f} | {row['visual_margin']:+.2f} |"
        )
    lines += ["", f"Run: `make experiment` on {machine}: this invocation {seconds[0] / 60:.1f} min; building its artifacts from scratch {seconds[1] / 60:.1f} min (re-runs reuse the store). Config: `{json.dumps(config.model_dump(mode='json', exclude={'store', 'sets', 'data_root', 'report'}))}`", ""]
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
