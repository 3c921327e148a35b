"""The grounding experiment's measures (stage ``measure``, one artifact per model).

Closed accuracy on the flipped-prior test split (from the evaluate artifact), image
sensitivity (share of test answers that change when the lesion's box is diffusion-noised at
test time) and the mean chosen - rejected log-probability margin of held-out (val) pairs,
text and visual separately.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from experiments.grounding.config import MeasureConfig
from tasks import catalog, ui
from tasks.catalog import SAMPLES
from tasks.config import NoiseConfig
from tasks.diffusion import noise_array, sample_seed
from tasks.evaluate import adapter_dir, load_metrics, load_predictions
from tasks.imaging import load_array, save_array
from tasks.sets import load_pairs
from tasks.store import ArtifactStore, Keyed, Manifest, code_version, safe_stem, stage_task_options

STAGE = "measure"
CODE = code_version(__name__, "models.families", "models.vlm", "tasks.diffusion")
METRICS = (
    "closed_accuracy",
    "off_answers",
    "forced_choice_accuracy",
    "image_sensitivity",
    "text_margin",
    "visual_margin",
)


def measure(
    store: ArtifactStore,
    config: MeasureConfig,
    ingest: Manifest,
    assemble: Manifest,
    sft: Manifest,
    evaluate: Manifest,
    train: Manifest | None = None,
) -> Manifest:
    inputs: dict[str, Keyed] = {"ingest": ingest, "assemble": assemble, "sft": sft, "evaluate": evaluate}
    if train is not None:
        inputs["train"] = train
    return store.run(
        STAGE, CODE, config, inputs, lambda out: build_measures(out, config, ingest, assemble, sft, evaluate, train)
    )


def build_measures(
    out: Path,
    config: MeasureConfig,
    ingest: Manifest,
    assemble: Manifest,
    sft: Manifest,
    evaluate: Manifest,
    train: Manifest | None,
) -> dict[str, float]:
    from models import vlm
    from tasks.sft import model_dir

    model = vlm.load(model_dir(sft), device="cpu")
    if train is not None:
        model = vlm.apply_adapter(model, adapter_dir(train))
    samples = catalog.rows(ingest, SAMPLES)
    result: dict[str, float] = {
        "closed_accuracy": closed_accuracy(load_metrics(evaluate)),
        "off_answers": off_answers(load_predictions(evaluate)),
    }
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
    return (
        sum(first_word(p["prediction"] or "") not in ("yes", "no") for p in closed) / len(closed)
        if closed
        else float("nan")
    )


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
        right.append(
            vlm.answer_logprob(model, sample["question"], truth, sample["image_path"])
            > vlm.answer_logprob(model, sample["question"], other, sample["image_path"])
        )
    return {"forced_choice_accuracy": float(np.mean(right)) if right else float("nan")}


def lesion_noised(sample: Mapping[str, Any], config: MeasureConfig) -> np.ndarray:
    """The sample's image with the inside of its boxes diffusion-noised to step ``noise_k``."""
    pixels = load_array(sample["image_path"])
    weight = np.zeros(pixels.shape[:2], dtype=np.float32)
    for x0, y0, x1, y1 in sample["boxes"]:
        weight[max(int(y0), 0) : int(y1), max(int(x0), 0) : int(x1)] = 1.0
    return noise_array(
        pixels, weight, NoiseConfig(k=config.noise_k), sample_seed(sample["sample_id"], config.noise_seed)
    )


def image_sensitivity(
    model: Any, samples: Sequence[Mapping[str, Any]], config: MeasureConfig, folder: Path
) -> dict[str, float]:
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
    store_root: str,
    config: MeasureConfig,
    ingest: Manifest,
    assemble: Manifest,
    sft: Manifest,
    evaluate: Manifest,
    train: Manifest | None = None,
) -> Manifest:
    manifest = measure(ArtifactStore(store_root), config, ingest, assemble, sft, evaluate, train)
    ui.manifest_markdown(manifest)
    return manifest
