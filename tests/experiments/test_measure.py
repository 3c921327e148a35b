"""The grounding experiment's arms, counterfactual twins, summary and verdict (the flow itself: test_flow.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from experiments.grounding.arms import arm_config, base_run_config, train_settings
from experiments.grounding.config import ALL_ARMS, ExperimentConfig, tiny_backbone
from experiments.grounding.report import interval, paired, prior_accuracy, summarize, verdict, with_displacement
from experiments.grounding.scores import first_word, lesion_removed, twins
from tasks.imaging import inpaint, save_array


def test_each_arm_changes_only_its_own_section():
    base = base_run_config(ExperimentConfig(), Path("/data/grounding.jsonl"))
    assert base.hallucinate.splits == ["train", "val"] and base.assemble.near_duplicate_bits is None
    arms = {arm: arm_config(base, arm, mean_weight=1.0432) for arm in ALL_ARMS}
    assert arms["dpo_text"].assemble.visual_pairs is False and arms["mmedpo"].assemble.visual_pairs is True
    assert arms["mmedpo_global"].noise.mode == "global" and arms["mmedpo"].noise.mode == "local"
    flat = arms["mmedpo_unweighted"].score.normalizer
    assert flat.gain == 0.0 and flat.anchor == 1.0432  # every pair at mmedpo's mean weight: same step size
    assert arms["mmedpo"].score == base.score and arms["mmedpo"].noise == base.noise
    # The anchor arm trains mmedpo's set; the others publish their own.
    assert arms["mmedpo_anchor"].name == arms["mmedpo"].name
    assert len({arms[a].name for a in ("sft", "dpo_text", "mmedpo_global", "mmedpo_unweighted")}) == 4
    with pytest.raises(ValueError):
        arm_config(base, "bogus")


def test_only_the_anchor_arm_trains_with_the_anchor_term_at_the_swept_rate():
    base = base_run_config(ExperimentConfig(), Path("/data/grounding.jsonl"))
    backbone = tiny_backbone()
    anchored = train_settings(base, "mmedpo_anchor", backbone, 3, Path("/ckpt"), 2e-5)
    plain = train_settings(base, "mmedpo", backbone, 3, Path("/ckpt"), 2e-5)
    assert anchored.train.anchor_coef == 1.0 and plain.train.anchor_coef == 0.0
    assert anchored.train.learning_rate == anchored.train.projector_lr == 2e-5
    assert anchored.train.model == anchored.evaluate.model == Path("/ckpt") and anchored.train.seed == 3
    # The paper's settings, scaled: beta 0.1, cosine, 3% warmup, LoRA alpha = 2 r, dropout 0.05.
    assert (plain.train.beta, plain.train.scheduler, plain.train.warmup_ratio) == (0.1, "cosine", 0.03)
    assert plain.train.lora_alpha == 2 * plain.train.lora_r and plain.train.lora_dropout == 0.05


def test_inpainting_removes_a_blob_and_keeps_the_rest():
    yy, xx = np.mgrid[:32, :32]
    background = (100 + 2 * xx).astype(np.uint8)  # a smooth ramp the fill must continue
    pixels = background.copy()
    blob = (yy - 12) ** 2 + (xx - 10) ** 2 <= 16
    pixels[blob] = 250
    mask = np.zeros_like(blob)
    mask[8:17, 6:15] = True
    filled = inpaint(pixels, mask, grow=1)
    assert filled.dtype == np.uint8
    assert np.abs(filled[blob].astype(int) - background[blob]).max() <= 2  # the ramp, not the blob
    grown = np.zeros_like(mask)
    grown[7:18, 5:16] = True
    assert (filled[~grown] == pixels[~grown]).all()
    with pytest.raises(ValueError):
        inpaint(pixels, np.ones_like(mask))


def test_only_presence_questions_with_a_lesion_get_a_twin_whose_answer_is_no(tmp_path):
    pixels = np.full((32, 32), 120, dtype=np.uint8)
    pixels[4:12, 4:12] = 240
    save_array(pixels, tmp_path / "a.png")
    base = {"image_path": str(tmp_path / "a.png"), "boxes": [[4, 4, 12, 12]], "split": "test"}
    samples = [
        {**base, "sample_id": "s:1", "question": "Is there a mass?", "answer": "yes"},
        {**base, "sample_id": "s:2", "question": "Is the lesion in the left half?", "answer": "yes"},
        {**base, "sample_id": "s:3", "question": "Is there a cyst?", "answer": "no", "boxes": []},
    ]
    found = twins(samples, tmp_path / "twins", grow=1)
    assert [(t["sample_id"], t["answer"], t["original"]) for t in found] == [("s:1", "no", "s:1")]
    removed = np.asarray(lesion_removed(samples[0], grow=1))
    assert removed.max() <= 121 and removed.min() >= 119  # the lesion is gone; the flat grey continues
    assert Path(found[0]["image_path"]).is_file()


def test_first_word_reads_a_yes_or_no_through_punctuation():
    assert [first_word(a) for a in ("Yes.", "no, there is", "", "  Maybe")] == ["yes", "no", "", "maybe"]


def row(arm: str, seed: int, counterfactual: float, chosen: float, off: float = 0.0) -> dict:
    return {
        "backbone": "tiny",
        "arm": arm,
        "seed": seed,
        "steps": 10.0,
        "closed_accuracy": counterfactual,
        "off_answers": off,
        "forced_choice_accuracy": counterfactual,
        "counterfactual_accuracy": counterfactual,
        "counterfactual_forced": counterfactual,
        "text_chosen_logp": chosen,
        "visual_chosen_logp": chosen,
        "text_margin": 1.0,
        "visual_margin": float("nan"),
    }


def test_interval_is_the_t_interval_of_the_mean():
    found = interval([0.6, 0.8, 0.7])
    assert found is not None
    # t(0.975, 2) = 4.303; std 0.1; half width 4.303 * 0.1 / sqrt(3).
    assert found["mean"] == pytest.approx(0.7) and found["std"] == pytest.approx(0.1)
    assert found["hi"] - found["mean"] == pytest.approx(4.3027 * 0.1 / 3**0.5, rel=1e-4)
    assert interval([float("nan")]) is None


def test_summary_paired_comparisons_displacement_and_verdict():
    rows = with_displacement(
        [row("sft", s, 0.30 + 0.01 * s, -1.0) for s in range(3)]
        + [row("dpo_text", s, 0.40 + 0.01 * s, -1.5, off=0.4) for s in range(3)]
        + [row("mmedpo", s, 0.70 + 0.02 * s, -0.5) for s in range(3)]
    )
    by = {(r["arm"], r["seed"]): r for r in rows}
    assert by["dpo_text", 0]["text_displacement"] == pytest.approx(-0.5)
    assert by["mmedpo", 2]["visual_displacement"] == pytest.approx(0.5)
    table = summarize(rows, "tiny", ["sft", "dpo_text", "mmedpo"])
    assert table[2]["counterfactual_accuracy"]["mean"] == pytest.approx(0.72)
    assert table[2]["visual_margin"] is None  # no finite value in any seed
    # A share's interval stops at 0 and 1; a log-prob's does not.
    spread = [dict(r, closed_accuracy=(0.2, 1.0, 0.0)[r["seed"]], text_margin=(0.2, 1.0, 0.0)[r["seed"]]) for r in rows]
    wide = summarize(spread, "tiny", ["sft"])[0]
    assert (wide["closed_accuracy"]["lo"], wide["closed_accuracy"]["hi"]) == (0.0, 1.0)
    assert wide["text_margin"]["lo"] < 0.0 and wide["text_margin"]["hi"] > 1.0
    difference = paired(rows, "tiny", "mmedpo", "sft", "counterfactual_accuracy")
    assert difference is not None
    assert difference["mean"] == pytest.approx(0.41) and difference["wins"] == 3 and difference["losses"] == 0
    lines = verdict(rows, "tiny", table)
    assert any("SFT + MMedPO beat both" in line for line in lines)
    # Without the MMedPO arm's lead, the verdict says so and what was measured for the best one.
    close = [dict(r, counterfactual_accuracy=0.41 + 0.01 * r["seed"]) if r["arm"] == "mmedpo" else r for r in rows]
    lines = verdict(close, "tiny", summarize(close, "tiny", ["sft", "dpo_text", "mmedpo"]))
    assert any("counterfactual accuracy (greedy): no MMedPO arm beat both" in line for line in lines)
    remains = [line for line in lines if line.startswith("  Measured for the best MMedPO arm")]
    assert len(remains) == 1  # the forced-choice counterfactual still wins
    assert "+11.0 points over SFT only" in remains[0] and "+1.0 points over SFT + DPO (text pairs)" in remains[0]
    assert "SFT only scores 31.0% (room left: 69.0 points); SFT + DPO (text pairs) scores 41.0%" in remains[0]
    assert any("SFT + MMedPO is above SFT only" in line for line in lines)
    drifted = [line for line in lines if "neither yes nor no" in line]
    assert len(drifted) == 1 and drifted[0].startswith("- SFT + DPO (text pairs): 40%")
    displaced = [line for line in lines if "likelihood displacement" in line]
    assert len(displaced) == 2 and all("SFT + DPO (text pairs)" in line for line in displaced)


def test_the_prior_answers_the_training_majority():
    samples = [{"split": "test", "answer_type": "closed", "answer": a} for a in ("yes", "no", "no", "no")]
    samples.append({"split": "train", "answer_type": "closed", "answer": "yes"})
    assert prior_accuracy(samples, 0.75) == 0.25 and prior_accuracy(samples, 0.25) == 0.75
