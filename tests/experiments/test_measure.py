"""The grounding experiment's arms, test-time noise, summary and verdict (the flow itself: test_flow.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.grounding.arms import arm_config, base_run_config
from experiments.grounding.config import ExperimentConfig, MeasureConfig
from experiments.grounding.measure import lesion_noised
from experiments.grounding.report import prior_accuracy, summarize, verdict


def test_each_arm_changes_only_its_own_section():
    base = base_run_config(ExperimentConfig(), Path("/data/grounding.jsonl"))
    assert base.hallucinate.splits == ["train", "val"] and base.assemble.near_duplicate_bits is None
    arms = {arm: arm_config(base, arm) for arm in ExperimentConfig().arms}
    assert arms["dpo_text"].assemble.visual_pairs is False and arms["mmedpo"].assemble.visual_pairs is True
    assert arms["mmedpo_global"].noise.mode == "global" and arms["mmedpo"].noise.mode == "local"
    assert (
        arms["mmedpo_unweighted"].score.normalizer.gain == 0.0
        and arms["mmedpo_unweighted"].score.normalizer.anchor == 1.0
    )
    assert arms["mmedpo"].score == base.score and arms["mmedpo"].noise == base.noise
    assert len({config.name for config in arms.values()}) == len(arms)  # each arm publishes its own set
    with pytest.raises(ValueError):
        arm_config(base, "bogus")


def rows(arm: str, accuracies: list[float], off: float = 0.0) -> list[dict]:
    return [
        {
            "arm": arm,
            "seed": i,
            "closed_accuracy": a,
            "off_answers": off,
            "forced_choice_accuracy": a,
            "image_sensitivity": 0.5,
            "text_margin": 1.0,
            "visual_margin": float("nan"),
        }
        for i, a in enumerate(accuracies)
    ]


def test_summary_is_mean_and_sample_std_over_seeds_and_the_verdict_reads_it():
    table = summarize(
        rows("mmedpo", [0.6, 0.8]) + rows("sft", [0.3, 0.3]) + rows("dpo_text", [0.65, 0.75], off=0.4),
        ["sft", "dpo_text", "mmedpo"],
    )
    ours = table[2]
    assert ours["closed_accuracy"][0] == pytest.approx(0.7) and ours["closed_accuracy"][1] == pytest.approx(
        np.std([0.6, 0.8], ddof=1)
    )
    assert ours["visual_margin"] is None  # no pair of that kind in any seed
    lines = verdict(table)
    assert any("test accuracy" in line and "above SFT only" in line for line in lines)
    assert any("test accuracy" in line and "no clear difference from SFT + DPO (text pairs)" in line for line in lines)
    drifted = [line for line in lines if "neither yes nor no" in line]
    assert len(drifted) == 1 and drifted[0].startswith("- SFT + DPO (text pairs): 40%")


def test_test_time_noise_stays_inside_the_lesion_box(tmp_path):
    from tasks.imaging import save_array

    pixels = np.full((32, 32), 128, dtype=np.uint8)
    save_array(pixels, tmp_path / "a.png")
    sample = {"sample_id": "t-1", "image_path": str(tmp_path / "a.png"), "boxes": [[4, 6, 14, 16]]}
    noised = lesion_noised(sample, MeasureConfig(noise_k=800))
    changed = noised != pixels
    assert changed[6:16, 4:14].mean() > 0.8 and not changed[16:, :].any() and not changed[:, 14:].any()


def test_the_prior_answers_the_training_majority():
    samples = [{"split": "test", "answer_type": "closed", "answer": a} for a in ("yes", "no", "no", "no")]
    samples.append({"split": "train", "answer_type": "closed", "answer": "yes"})
    assert prior_accuracy(samples, 0.75) == 0.25 and prior_accuracy(samples, 0.25) == 0.75
