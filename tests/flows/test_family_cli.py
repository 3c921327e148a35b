"""`mmedpo train` and `mmedpo evaluate` on the demo set with a saved tiny Qwen2.5-VL and a tiny Gemma 3
folder as `train.model`, as a user would run them: the curated demo set once, then each family."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from flows.cli import main
from models.families import FAMILIES
from models.tiny import build_tiny
from tasks import catalog
from tasks.config import RunConfig
from tasks.demo_data import build_demo_data
from tasks.store import ArtifactStore


@pytest.fixture(scope="module")
def demo_set(prefect_harness, tmp_path_factory) -> Path:
    """The curated demo set; returns the folder holding the run's store and sets."""
    root = tmp_path_factory.mktemp("families-demo")
    source = build_demo_data(root / "samples")
    config = RunConfig(
        name="demo",
        store=root / "store",
        sets=root / "sets",
        ingest={"sources": [{"format": "jsonl", "root": str(source), "name": "demo"}]},
    )
    (root / "curate.yaml").write_text(yaml.safe_dump(config.model_dump(mode="json")))
    assert main(["curate", "--config", str(root / "curate.yaml")]) == 0
    return root


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_5_vl", "gemma3"])
def test_train_and_evaluate_from_the_cli_with_a_saved_family_model(demo_set: Path, family: str, capsys):
    model = build_tiny(family, demo_set / "models" / family, seed=0)
    config = yaml.safe_load((demo_set / "curate.yaml").read_text())
    config["train"] = {
        "model": str(model),
        "lora_r": 4,
        "lora_alpha": 8,
        "learning_rate": 1e-3,
        "max_steps": 2,
        "batch_size": 2,
        "gradient_accumulation": 1,
        "max_length": 256,  # checked against every pair's prompt with its image tokens
        "gradient_checkpointing": False,
        "logging_steps": 1,
        "save_steps": 1000,
    }
    config["evaluate"] = {"max_new_tokens": 4, "report_max_new_tokens": 6, "meteor": False, "batch_size": 4}
    run_file = demo_set / f"{family}.yaml"
    run_file.write_text(yaml.safe_dump(config))

    assert main(["train", "--config", str(run_file), "--preferences", "demo"]) == 0
    trained = Path(capsys.readouterr().out.split("train artifact: ")[1].split()[0])
    manifest = ArtifactStore(demo_set / "store").get("train", trained.name)
    assert manifest is not None and manifest.counts["train.steps"] == 2
    assert manifest.counts["pairs.trained.text"] > 0 and manifest.counts["pairs.trained.visual"] > 0
    adapter = load_file(manifest.file("adapter/adapter_model.safetensors"))
    spec = FAMILIES[family]
    assert any(spec.is_projector(name) for name in adapter)  # Qwen's visual.merger, Gemma's projector
    assert all(spec.is_projector(name) or f"{spec.language_model}.layers." in name for name in adapter)
    assert manifest.file("base_model.txt").read_text().strip() == str(model.resolve())

    assert main(["evaluate", "--config", str(run_file), "--train", trained.name]) == 0
    assert "closed_accuracy" in capsys.readouterr().out
    evaluations = [m for m in ArtifactStore(demo_set / "store").list("evaluate") if m.config["model"] == str(model)]
    assert {("train" in m.inputs) for m in evaluations} == {False, True}  # base and trained
    for evaluation in evaluations:
        rows = catalog.rows(evaluation, catalog.PREDICTIONS)
        assert rows and all(row["status"] == "ok" for row in rows), [row["error"] for row in rows]
