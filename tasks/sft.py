"""Stage sft: supervised fine-tuning (TRL's SFTTrainer) of a small LLaVA on ground-truth answers.

DPO refines a model that already answers the task; this stage makes one from a checkpoint
(or from the tiny random-weight LLaVA of models/tiny.py) by training the chosen parts -
vision tower, projector, language model - on a split's (image, question, answer) samples.
The artifact is a complete checkpoint (``model/``: weights, tokenizer, processor) that the
train stage takes as ``train.model`` and evaluation as its base model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from tasks import schemas, ui
from tasks.config import SFTConfig
from tasks.store import ArtifactStore, Keyed, Manifest, code_version, stage_task_options

STAGE = "sft"
CODE = code_version(__name__, "models.sft", "models.vlm", "models.tiny")
MODEL = "model"


def sft(store: ArtifactStore, config: SFTConfig, ingest: Keyed, model: Keyed | None = None) -> Manifest:
    """``model`` fingerprints ``config.model`` when one is given (evaluate.model_snapshot), so
    new weights at the same path retrain."""
    inputs: dict[str, Keyed] = {"ingest": ingest}
    if model is not None:
        inputs["model"] = model
    return store.run(STAGE, CODE, config, inputs, lambda out: build_sft(out, config, ingest))


def model_dir(manifest: Manifest) -> Path:
    """The fine-tuned checkpoint inside an sft artifact."""
    return Path(manifest.path) / MODEL


def select_samples(samples: list[dict[str, Any]], config: SFTConfig) -> tuple[list[dict[str, Any]], dict[str, float]]:
    counts: dict[str, float] = {"samples": len(samples)}
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
            continue
        counts[f"skipped_{reason}"] = counts.get(f"skipped_{reason}", 0) + 1
    counts["trained"] = len(kept)
    return kept, counts


def build_sft(out: Path, config: SFTConfig, ingest: Keyed) -> dict[str, float]:
    from models.sft import fit_sft

    assert isinstance(ingest, Manifest), "sft reads the ingest artifact's samples"
    samples = schemas.read_parquet(ingest.file("samples.parquet"), schemas.SAMPLES).to_pylist()
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
def sft_task(store_root: str, config: SFTConfig, ingest: Manifest, model: Keyed | None = None) -> Manifest:
    manifest = sft(ArtifactStore(store_root), config, ingest, model)
    ui.manifest_markdown(manifest)
    ui.table(f"{STAGE}-counts", ui.counts_rows(manifest.counts), "sft: samples used and final metrics")
    return manifest
