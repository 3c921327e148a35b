"""The grounding experiment end to end at toy size, on both backbones: every arm's measures, the
sweep's choice, the report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from experiments.grounding.arms import LABELS
from experiments.grounding.config import (
    ALL_ARMS,
    BackboneConfig,
    ExperimentConfig,
    GroundingDataConfig,
    RoundsConfig,
    scaled_train,
    smollm2_backbone,
    tiny_backbone,
)
from experiments.grounding.flow import experiment_flow
from tasks.config import SFTConfig

SMOLLM2 = Path(__file__).resolve().parents[2] / "data" / "models" / "smollm2-135m-instruct"


def toy_config(tmp_path: Path) -> ExperimentConfig:
    pretrained = smollm2_backbone(layers=1)
    return ExperimentConfig(
        store=tmp_path / "store",
        sets=tmp_path / "sets",
        data_root=tmp_path / "data",
        report=tmp_path / "report" / "experiment.md",
        data=GroundingDataConfig(n_train=32, n_val=12, n_test=16, image_size=32, question_mix=[0.6, 0.4, 0.0]),
        backbones=[
            BackboneConfig(
                name="tiny",
                label="tiny",
                sft=SFTConfig(epochs=1, batch_size=16, scheduler="constant"),
                train=scaled_train(epochs=1, max_steps=2),
                seeds=[0, 1],
                arms=list(ALL_ARMS),
                learning_rates=[1e-4, 1e-3],
            ),
            pretrained.model_copy(
                update={
                    "sft": pretrained.sft.model_copy(update={"text_model": SMOLLM2, "epochs": 1}),
                    "train": scaled_train(epochs=1, max_steps=2),
                    "seeds": [0],
                    "learning_rates": [1e-4],
                }
            ),
        ],
        rounds=RoundsConfig(num_samples=2, max_new_tokens=2),
    )


@pytest.mark.slow
def test_every_arm_is_trained_evaluated_and_measured_on_both_backbones(tmp_path, prefect_harness):
    from tasks.smollm2 import ensure

    ensure(SMOLLM2)
    config = toy_config(tmp_path)

    results = experiment_flow(config)

    rows = results["rows"]
    tiny = [r for r in rows if r["backbone"] == "tiny"]
    assert [r["arm"] for r in tiny] == list(ALL_ARMS) * 2
    assert [r["arm"] for r in rows if r["backbone"] == "smollm2-1l"] == ["sft", "dpo_text", "mmedpo", "mmedpo_anchor"]
    for row in rows:
        for metric in ("closed_accuracy", "off_answers", "forced_choice_accuracy", "counterfactual_accuracy"):
            assert 0.0 <= row[metric] <= 1.0, (row["arm"], metric)
        assert row["counterfactual_pairs"] > 0 and row["closed_questions"] > 0
        assert math.isfinite(row["text_margin"]) and math.isfinite(row["visual_chosen_logp"])
    by_arm = {(r["backbone"], r["arm"], r["seed"]): r for r in rows}
    # Trained arms answer with other models than SFT; the anchor arm trains the same set differently.
    assert by_arm["tiny", "sft", 0]["text_chosen_logp"] != by_arm["tiny", "mmedpo", 0]["text_chosen_logp"]
    assert by_arm["tiny", "mmedpo_anchor", 0]["text_chosen_logp"] != by_arm["tiny", "mmedpo", 0]["text_chosen_logp"]
    # Two rounds train as many steps as one round in all.
    assert by_arm["tiny", "mmedpo_rounds", 0]["steps"] == by_arm["tiny", "mmedpo", 0]["steps"] == 2
    # The sweep tried every rate for DPO-text, MMedPO and MMedPO + anchor on the first seed, on the val split, and
    # chose one of them; MMedPO's one-change variants train at MMedPO's rate.
    sweep = [s for s in results["sweep"] if s["backbone"] == "tiny"]
    assert sorted({s["arm"] for s in sweep}) == ["dpo_text", "mmedpo", "mmedpo_anchor"]
    assert len(sweep) == 3 * 2 and all(s["counterfactual_pairs"] > 0 for s in sweep)
    chosen = results["chosen"]["tiny"]
    assert set(chosen) == set(ALL_ARMS) - {"sft"} and chosen["mmedpo"] in (1e-4, 1e-3)
    assert chosen["mmedpo_rounds"] == chosen["mmedpo_global"] == chosen["mmedpo_unweighted"] == chosen["mmedpo"]
    # Weights have a spread the rules judge alone cannot give (two values: the finding's clinical class): the
    # SmolLM2 judge of the panel shades them.
    text_weights = {round(w, 3) for kind, w in results["weights"] if kind == "text"}
    assert len(text_weights) >= 3 and min(text_weights) < max(text_weights) - 0.05
    report = config.report.read_text()
    assert all(label in report for label in LABELS.values())
    assert "first 1 of 30 layers" in report and "counterfactual accuracy" in report
    assert "smollm2-logits: smollm2-135m-instruct, yesno protocol" in report
    assert config.report.with_suffix(".png").stat().st_size > 1000


def test_a_variant_of_mmedpo_needs_mmedpo_for_its_learning_rate():
    with pytest.raises(ValueError, match="mmedpo_unweighted trains at mmedpo's chosen rate"):
        BackboneConfig(**{**tiny_backbone().model_dump(), "arms": ["sft", "mmedpo_unweighted"]})
