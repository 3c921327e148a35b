"""The training program's job file: what a rank of ``accelerate launch`` reads, with plain values
only (models/ imports nothing of tasks/), must give ``fit`` the settings the train stage had."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.launching import launch_plan
from models.training import MEMBERS, FitSettings, Job
from tasks.config import ConfigError
from tests.support.configs import small_train


def test_a_job_read_back_from_its_file_has_the_configs_values_and_paths(tmp_path: Path):
    adapter = tmp_path / "previous" / "adapter"
    config = small_train(
        model=tmp_path / "base", init_adapter=adapter, loss_type=["sigmoid", "bco_pair"], loss_weights=[1.0, 0.5]
    )
    config = config.model_copy(update={"gradient_accumulation": None, "batch_size": 1, "global_batch_size": 4})
    job = Job(
        settings=FitSettings.of(config, processes=2),
        pairs=[{"pair_id": "p1", "weight": 0.25, "chosen": "yes"}],
        out=tmp_path / "out",
        checkpoints=tmp_path / "checkpoints",
        resume=True,
    )
    job.write(tmp_path / "job.json")
    read = Job.read(tmp_path / "job.json")

    assert read == job
    assert read.settings.model == tmp_path / "base" and read.settings.init_adapter == adapter
    assert read.settings.ref_model is None
    assert read.settings.accumulation_steps(2) == config.accumulation_steps(2) == 2
    for name in MEMBERS:
        assert getattr(read.settings, name) == getattr(config, name), name
    assert {"model", "ref_model", "init_adapter", "beta", "lora_r", "max_pixels", "precision"} <= set(MEMBERS)


def test_a_rank_count_other_than_the_planned_one_is_refused():
    settings = FitSettings.of(small_train(gradient_accumulation=None, batch_size=1, global_batch_size=4), 2)
    with pytest.raises(ValueError, match="planned for 2 processes, not 4"):
        settings.accumulation_steps(4)


def test_a_broken_job_file_names_the_file(tmp_path: Path):
    path = tmp_path / "job.json"
    path.write_text('{"settings": {"beta": 0.1}}')
    with pytest.raises(ValueError, match=f"{path}: not a training job"):
        Job.read(path)


def test_an_unreadable_accelerate_config_is_a_config_error_naming_the_field(tmp_path: Path):
    broken = tmp_path / "accelerate.yaml"
    broken.write_text("num_machines: [two\n")
    with pytest.raises(ConfigError, match=f"train.accelerate_config: {broken}: not a readable accelerate config"):
        launch_plan(small_train(accelerate_config=broken))
