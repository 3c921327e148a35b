"""Stage sft: supervised fine-tuning (TRL's SFTTrainer) on ground-truth answers, before DPO."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from tasks import catalog, counters, ui
from tasks.catalog import SAMPLES
from tasks.config import SFTConfig
from tasks.counters import Counters
from tasks.store import ArtifactStore, Manifest, code_version, stage_task_options

STAGE = "sft"
CODE = code_version(__name__)
MODEL = "model"


def sft(store: ArtifactStore, config: SFTConfig, ingest: Manifest) -> Manifest:
    """A model that already answers the task, for DPO to refine.

    Trains the chosen parts of a checkpoint (``config.model``; unset, the tiny random-weight
    LLaVA of models/tiny) - vision tower, projector, language model - on a split's (image,
    question, answer) samples. A run config with an ``sft:`` section makes ``pipeline`` run
    this before ``train``, whose base model it then is.

    Inputs: ``ingest`` (SAMPLES) and, when ``config.model`` is given, its content (new weights
    at the same path retrain; a renamed copy does not). Output: ``model/`` (a complete checkpoint:
    weights, tokenizer, processor), ``metrics.json``. Counters: ``samples.seen``,
    ``samples.trained``, ``samples.skipped.<reason>``, ``train.steps``, ``train.loss``,
    ``train.loss.final`` (when a loss was logged), ``parameters.trainable``.
    """
    return store.run(
        STAGE, CODE, config, {"ingest": ingest}, lambda out: build_sft(out, config, ingest), ("metrics.json",)
    )


def model_dir(manifest: Manifest) -> Path:
    """The fine-tuned checkpoint inside an sft artifact."""
    return Path(manifest.path) / MODEL


def select_samples(samples: list[dict[str, Any]], config: SFTConfig) -> tuple[list[dict[str, Any]], dict[str, float]]:
    counts = Counters()
    counts.add("samples", "seen", n=len(samples))
    counts.add("samples", "trained", n=0)
    kept = []
    for sample in samples:
        if sample["split"] not in config.splits:
            reason = "split"
        elif not sample["answer"].strip():
            reason = "empty_answer"
        elif not Path(sample["image_path"]).is_file():
            reason = "missing_image"
        else:
            kept.append(sample)
            counts.add("samples", "trained")
            continue
        counts.add("samples", "skipped", reason)
    return kept, counts.as_dict()


def build_sft(out: Path, config: SFTConfig, ingest: Manifest) -> dict[str, float]:
    from models.sft import fit_sft

    samples = catalog.rows(ingest, SAMPLES)
    kept, counts = select_samples(samples, config)
    if not kept:
        raise ValueError(f"sft: no sample to train on ({counts})")
    metrics = fit_sft(
        config,
        [(s["question"], s["answer"], s["image_path"]) for s in sorted(kept, key=lambda s: s["sample_id"])],
        out / MODEL,
        out / ".checkpoints",
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    return {**counts, **metrics}


@task(**stage_task_options(STAGE, CODE, tags=["gpu"]))
def sft_task(store_root: str, config: SFTConfig, ingest: Manifest) -> Manifest:
    manifest = sft(ArtifactStore(store_root), config, ingest)
    ui.manifest_markdown(manifest)
    ui.table(f"{STAGE}-counts", counters.rows(manifest.counts), "sft: samples used and final metrics")
    return manifest
