"""The parent flow under the Prefect harness: curate -> train (a `gpu`-tagged task) -> evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from flows.pipeline import pipeline
from tasks.config import EvaluateConfig, IngestConfig, RunConfig, SourceConfig
from tests.support.configs import small_train


def small_run(tmp_path, name: str, boxes: bool = True, **sections) -> RunConfig:
    """Three train questions and a test one on random images; a two-step LoRA run."""
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = []
    for i, (split, answer) in enumerate([("train", "yes"), ("train", "no"), ("train", "yes"), ("test", "no")]):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8)).save(raw / f"{i}.png")
        record = {
            "id": f"q{i}",
            "image": f"{i}.png",
            "question": "Is there a lesion?",
            "answer": answer,
            "split": split,
        }
        lines.append(json.dumps({**record, "boxes": [[5, 5, 25, 25]]} if boxes else record))
    (raw / "data.jsonl").write_text("\n".join(lines) + "\n")
    return RunConfig(
        name=name,
        store=tmp_path / "store",
        sets=tmp_path / "sets",
        ingest=IngestConfig(sources=[SourceConfig(format="jsonl", root=raw / "data.jsonl")]),
        train=small_train(),
        evaluate=EvaluateConfig(max_new_tokens=4, meteor=False, examples=1),
        **sections,
    )


@pytest.mark.slow
def test_pipeline_trains_on_the_curated_set_and_evaluates_its_test_split(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    config = small_run(tmp_path, "flowtest")

    result = pipeline(config)

    assembled = result.curated["assemble"]
    assert assembled.counts["pairs.built"] == 6  # 3 train samples x (text + visual); the test sample makes none
    assert (config.sets / "flowtest" / assembled.digest / "manifest.json").is_file()
    assert result.train.inputs == {"assemble": assembled.key} and result.train.counts["train.steps"] == 2
    assert result.evaluation.trained is not None and result.evaluation.trained.inputs["train"] == result.train.key
    closed = [r for r in result.evaluation.comparison if r["metric"] == "closed_accuracy"]
    assert closed and closed[0]["n"] == 1
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_="train-")))
    # Sub-flow runs also appear as task runs (named after the flow); they carry a child flow run id.
    train_runs = [
        run for run in runs if run.name.startswith("train-") and not run.state.state_details.child_flow_run_id
    ]
    assert train_runs and all("gpu" in run.tags for run in train_runs)


@pytest.mark.slow
def test_pipeline_with_an_sft_section_trains_dpo_from_the_sft_checkpoint(tmp_path, prefect_harness):
    from tasks.config import SFTConfig
    from tasks.sft import model_dir

    config = small_run(
        tmp_path, "sftflow", boxes=False, sft=SFTConfig(epochs=1, batch_size=4, tiny_hidden_size=32, tiny_layers=1)
    )

    result = pipeline(config)

    assert result.sft is not None and result.sft.inputs == {"ingest": result.curated["ingest"].key}
    assert result.sft.counts["samples.trained"] == 3
    # Train names the SFT artifact as its model, and the adapter was trained on that checkpoint.
    assert (
        result.train.inputs["assemble"] == result.curated["assemble"].key
        and result.train.inputs["sft"] == result.sft.key
    )
    # ...and the checkpoint it trained from is identified by its content, as any model folder.
    from tasks.store import ArtifactStore

    assert result.train.inputs["model"] == ArtifactStore(config.store).digests.tree(model_dir(result.sft))[:16]
    assert f"sft/{result.sft.key}" in result.train.lineage
    assert result.train.file("base_model.txt").read_text().strip() == str(model_dir(result.sft))
    assert result.evaluation.base.config["model"] == str(model_dir(result.sft))
