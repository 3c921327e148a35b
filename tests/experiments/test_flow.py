"""The grounding experiment end to end at toy size: every arm's metrics come out, and the report."""

from __future__ import annotations

import math

import pytest

from experiments.grounding.arms import LABELS
from experiments.grounding.config import ExperimentConfig, GroundingDataConfig
from experiments.grounding.flow import experiment_flow
from tasks.config import SFTConfig, TrainConfig


@pytest.mark.slow
def test_every_arm_is_trained_evaluated_and_measured(tmp_path, prefect_harness):
    config = ExperimentConfig(
        store=tmp_path / "store",
        sets=tmp_path / "sets",
        data_root=tmp_path / "data",
        report=tmp_path / "report" / "experiment.md",
        seeds=[0],
        data=GroundingDataConfig(n_train=48, n_val=8, n_test=16, image_size=32, question_mix=[0.6, 0.4, 0.0]),
        sft=SFTConfig(epochs=1, batch_size=16, scheduler="constant"),
        train=TrainConfig(
            lora_r=4,
            lora_alpha=8,
            learning_rate=1e-4,
            max_steps=2,
            batch_size=4,
            gradient_accumulation=1,
            max_length=None,
            gradient_checkpointing=False,
            save_steps=100,
            logging_steps=1,
        ),
    )

    rows = experiment_flow(config)

    assert [row["arm"] for row in rows] == list(config.arms) == list(LABELS)
    for row in rows:
        for metric in ("closed_accuracy", "off_answers", "forced_choice_accuracy", "image_sensitivity"):
            assert 0.0 <= row[metric] <= 1.0, (row["arm"], metric)
        assert math.isfinite(row["text_margin"]) and math.isfinite(row["visual_margin"])
        assert row["text_margin_pairs"] > 0 and row["visual_margin_pairs"] > 0  # the val split's held-out pairs
    # The SFT-only arm and the trained arms answer with different models.
    by_arm = {row["arm"]: row for row in rows}
    assert by_arm["sft"]["text_margin"] != by_arm["mmedpo"]["text_margin"]
    report = config.report.read_text()
    assert all(label in report for label in LABELS.values())
    assert config.report.with_suffix(".png").stat().st_size > 1000
