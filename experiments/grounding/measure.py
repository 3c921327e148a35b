"""The grounding experiment's measures as a stage (``measure``, one artifact per model and split).

What is measured: experiments/grounding/scores.py. The test split's greedy answers come from the
evaluate flow's predictions when its artifact is given (the val split's are generated here).
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import task

from experiments.grounding import scores
from experiments.grounding.config import MeasureConfig
from tasks import catalog, ui
from tasks.catalog import SAMPLES
from tasks.evaluate import adapter_dir, load_predictions
from tasks.store import ArtifactStore, Keyed, Manifest, code_version, stage_task_options

STAGE = "measure"
CODE = code_version(__name__)


def measure(
    store: ArtifactStore,
    config: MeasureConfig,
    ingest: Manifest,
    model: Manifest,
    evaluate: Manifest | None = None,
    train: Manifest | None = None,
) -> Manifest:
    """``model``: the sft artifact whose checkpoint is measured (with ``train``'s adapter merged in)."""
    inputs: dict[str, Keyed] = {"ingest": ingest, "sft": model}
    if evaluate is not None:
        inputs["evaluate"] = evaluate
    if train is not None:
        inputs["train"] = train
    return store.run(
        STAGE, CODE, config, inputs, lambda out: build_measures(out, config, ingest, model, evaluate, train)
    )


def build_measures(
    out: Path,
    config: MeasureConfig,
    ingest: Manifest,
    sft: Manifest,
    evaluate: Manifest | None,
    train: Manifest | None,
) -> dict[str, float]:
    from models import vlm
    from tasks.sft import model_dir

    model = vlm.load(model_dir(sft))
    if train is not None:
        model = vlm.apply_adapter(model, adapter_dir(train))
    samples = catalog.rows(ingest, SAMPLES)
    greedy = None
    if evaluate is not None:
        greedy = {p["sample_id"]: p["prediction"] or "" for p in load_predictions(evaluate)}
    result = scores.split_measures(model, samples, config.split, config.batch_size, greedy)
    (out / "measures.json").write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


@task(**stage_task_options(STAGE, CODE))
def measure_task(
    store_root: str,
    config: MeasureConfig,
    ingest: Manifest,
    model: Manifest,
    evaluate: Manifest | None = None,
    train: Manifest | None = None,
) -> Manifest:
    manifest = measure(ArtifactStore(store_root), config, ingest, model, evaluate, train)
    ui.manifest_markdown(manifest)
    return manifest
