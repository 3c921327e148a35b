import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasks.config import TrainConfig
from tasks.store import ArtifactStore
from tasks.train import checkpoint_dir, preference_snapshot, train
from tests.support.configs import small_train
from tests.support.preference import preference_rows, write_train_pairs


def write_set(folder: Path, rows: list[dict]) -> Path:
    return write_train_pairs(folder / "preferences.parquet", rows)


def small_config(**overrides) -> TrainConfig:
    return small_train(save_steps=1, keep_checkpoints=True, **overrides)


@pytest.mark.slow
def test_train_publishes_adapter_counts_and_resumes(tmp_path: Path):
    rows = preference_rows(tmp_path / "img", [1.2, 0.8, 1.0, 0.9, 1.1, 0.75, 1.25, 1.0])
    rows[2]["chosen_image"] = str(tmp_path / "gone.png")
    rows[3]["split"] = "test"
    path = write_set(tmp_path, rows)
    store = ArtifactStore(tmp_path / "store")
    config = small_config()
    manifest = train(store, config, preference_snapshot(path), path)

    assert manifest.counts["pairs.in_set"] == 8
    assert manifest.counts["pairs.skipped.missing_image"] == 1
    assert manifest.counts["pairs.skipped.split"] == 1
    assert (
        manifest.counts["pairs.trained.text"] + manifest.counts["pairs.trained.visual"]
        == manifest.counts["pairs.trained"]
        == 6
    )
    assert manifest.counts["train.steps"] == 2
    assert (
        "train.last.visual/rewards/margins" in manifest.counts and "train.last.text/rewards/margins" in manifest.counts
    )
    assert "adapter/adapter_model.safetensors" in manifest.files and "tiny-model/model.safetensors" in manifest.files
    adapter = load_file(manifest.file("adapter/adapter_model.safetensors"))
    # LoRA on the language model, plus the fully trained projector (projector_lr, the paper's 2e-5).
    assert adapter and all("language_model" in name or "multi_modal_projector" in name for name in adapter)
    assert any("multi_modal_projector" in name for name in adapter) and any("lora_" in name for name in adapter)
    assert manifest.file("base_model.txt").read_text().strip() == "tiny-model"
    assert manifest.config["lora_r"] == 4 and manifest.inputs["assemble"] == preference_snapshot(path).key
    history = json.loads(manifest.file("log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2]

    assert train(store, config, preference_snapshot(path), path).created == manifest.created  # stored, not retrained

    # A run killed while writing step 2's checkpoint (the Trainer writes trainer_state.json last)
    # resumes from step 1's and ends where the uninterrupted run did.
    shutil.rmtree(manifest.path)
    partial = checkpoint_dir(store, config, {"assemble": preference_snapshot(path)}) / "checkpoint-2"
    (partial / "trainer_state.json").unlink()
    resumed = train(store, config, preference_snapshot(path), path, resume=True)
    assert resumed.key == manifest.key and resumed.counts["train.resumed"] == 1 and resumed.counts["train.steps"] == 2
    # Only step 2 ran again: the resumed run's mean loss is the original run's step-2 loss.
    step2 = next(h["loss"] for h in history if h.get("step") == 2 and "loss" in h)
    assert resumed.counts["train.loss"] == pytest.approx(step2, rel=1e-4)
    again = load_file(resumed.file("adapter/adapter_model.safetensors"))
    for name, value in adapter.items():
        torch.testing.assert_close(again[name], value, rtol=1e-4, atol=1e-6)


def test_a_set_with_nothing_trainable_fails_with_the_reasons(tmp_path: Path):
    rows = preference_rows(tmp_path / "img")[:2]
    for row in rows:
        row["split"] = "test"
    path = write_set(tmp_path, rows)
    with pytest.raises(ValueError, match="pairs.skipped.split"):
        train(ArtifactStore(tmp_path / "store"), small_config(), preference_snapshot(path), path)


@pytest.mark.slow
def test_a_published_adapter_leaves_no_checkpoints_and_rebuilds_to_the_same_bytes(tmp_path: Path):
    path = write_set(tmp_path, preference_rows(tmp_path / "img", [1.2, 0.8, 1.0, 0.9]))
    config = small_train(save_steps=1)
    first_store, second_store = ArtifactStore(tmp_path / "one"), ArtifactStore(tmp_path / "two")
    first = train(first_store, config, preference_snapshot(path), path)
    assert not checkpoint_dir(first_store, config, {"assemble": preference_snapshot(path)}).exists()
    # Built again elsewhere (other temporary folder names): the same adapter bytes, so the same digest,
    # and evaluation - keyed by it - is a hit after a rebuild.
    second = train(second_store, config, preference_snapshot(path), path)
    assert (
        first.file("adapter/adapter_config.json").read_text() == second.file("adapter/adapter_config.json").read_text()
    )
    assert json.loads(first.file("adapter/adapter_config.json").read_text())["base_model_name_or_path"] == "tiny-model"
    assert second.digest == first.digest
