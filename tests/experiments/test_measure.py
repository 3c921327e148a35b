"""The grounding experiment's measures, arms and report (the flow itself: test_flow.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from experiments.grounding.arms import arm_config, train_settings
from experiments.grounding.config import ARMS, BackboneConfig, ExperimentConfig, tiny_backbone
from experiments.grounding.flow import run_cli
from experiments.grounding.report import contrasts, load_results, save_results, write_report
from experiments.grounding.scores import first_word, items, measures_from, normalized


def sample(name: str, answer: str, answer_type: str = "closed") -> dict:
    return {"sample_id": f"grounding:test:{name}", "split": "test", "answer": answer, "answer_type": answer_type}


ROWS = [
    sample("test-00000", "yes"),
    sample("test-00000-q", "upper left", "open"),
    sample("test-00000-mirror", "no"),
    sample("test-00000-clean", "yes"),
    sample("test-00001", "no"),
    sample("test-00001-q", "lower right", "open"),
    sample("test-00001-mirror", "yes"),
    sample("test-00001-clean", "no"),
]


def logps_for(choices: dict[str, str]) -> dict[str, tuple[float, float]]:
    return {f"grounding:test:{k}": ((-0.1, -2.0) if v == "yes" else (-2.0, -0.1)) for k, v in choices.items()}


def test_a_model_that_looks_scores_every_item_and_one_that_answers_the_prior_none():
    roles = items(ROWS, "test")
    assert [len(roles[r]) for r in ("closed", "mirror", "clean", "open")] == [2, 2, 2, 2]
    looks = {s["sample_id"]: s["answer"] + "." for s in ROWS}
    right = {k.rsplit(":", 1)[-1]: s["answer"] for k, s in zip(looks, ROWS) if s["answer_type"] == "closed"}
    found = measures_from(roles, looks, logps_for(right))
    assert found["relocation_greedy"] == found["relocation_forced"] == found["relocation"] == 1.0
    assert found["removal_invariance"] == found["quadrant_exact"] == found["closed_accuracy"] == 1.0
    assert found["accuracy_gold_no"] == found["forced_gold_yes"] == 1.0 and found["off_answers"] == 0.0
    # Always "yes" (the training prior): right on half the originals, never on an original and its twin.
    prior = {s["sample_id"]: "Yes" for s in ROWS}
    found = measures_from(roles, prior, logps_for({k.rsplit(":", 1)[-1]: "yes" for k in prior}))
    assert found["closed_accuracy"] == 0.5 and found["relocation"] == 0.0
    assert found["accuracy_gold_yes"] == 1.0 and found["accuracy_gold_no"] == 0.0
    assert found["removal_invariance"] == 1.0 and found["quadrant_exact"] == 0.0
    assert found["gold_logp"] == pytest.approx((-0.1 - 2.0) / 2)


def test_a_model_that_reads_the_distractor_passes_relocation_and_fails_removal():
    roles = items(ROWS, "test")
    # Answers "opposite the ellipse": right with the distractor, lost (off yes/no) without it.
    answers = {s["sample_id"]: ("maybe" if s["sample_id"].endswith("clean") else s["answer"]) for s in ROWS}
    choices = {s["sample_id"].rsplit(":", 1)[-1]: s["answer"] for s in ROWS if s["answer_type"] == "closed"}
    choices |= {"test-00000-clean": "no", "test-00001-clean": "yes"}
    found = measures_from(roles, answers, logps_for(choices))
    assert found["relocation"] == 1.0
    assert found["removal_invariance"] == found["removal_invariance_forced"] == 0.0


def test_items_refuse_a_split_without_twins_and_answers_are_normalized():
    with pytest.raises(ValueError, match="relocation twin"):
        items([sample("test-00000", "yes")], "test")
    assert first_word(" Yes, it is.") == "yes" and normalized("Upper-left.") == "upper left"


def test_each_arm_changes_one_thing_and_all_train_alike(tmp_path):
    config = ExperimentConfig()
    source = tmp_path / "grounding.jsonl"
    runs = {arm: arm_config(config, source, arm) for arm in ARMS}
    assert runs["text"].assemble.visual_pairs is False and runs["local"].assemble.visual_pairs is True
    assert runs["global"].noise.mode == "global" and runs["local"].noise.mode == "local"
    assert runs["sham"].ingest.sources[0].root == tmp_path / "sham.jsonl"
    assert {r.ingest.sources[0].root for a, r in runs.items() if a != "sham"} == {source}
    assert {r.noise.space for r in runs.values()} == {"unit"}
    for kind in ("normalizer", "visual_normalizer"):  # every pair weighs 1
        flat = getattr(runs["local"].score, kind)
        assert flat.anchor == 1.0 and flat.gain == 0.0
    settings = [train_settings(runs[a], tiny_backbone(), 3, Path("/ckpt"), 2e-4).train for a in ARMS]
    assert len({s.model_dump_json() for s in settings}) == 1
    assert settings[0].learning_rate == settings[0].projector_lr == 2e-4 and settings[0].seed == 3
    with pytest.raises(ValueError):
        arm_config(config, source, "bogus")
    with pytest.raises(ValueError, match="also a test seed"):
        BackboneConfig.model_validate({**tiny_backbone().model_dump(), "seeds": [0, 100]})


def results(gap: float, seeds: int = 6, sham_effect: float = 0.12) -> dict:
    """Synthetic results: A2 above A3 by ``sham_effect`` (plus a seed-dependent wobble)."""
    base = {"relocation": 0.3, "gold_logp": -0.7}
    keys = [
        "relocation_greedy", "relocation_forced", "removal_invariance", "removal_invariance_forced",
        "quadrant_exact", "closed_accuracy", "accuracy_gold_yes", "accuracy_gold_no", "forced_gold_yes",
        "forced_gold_no", "off_answers", "forced_accuracy",
    ]  # fmt: skip
    lift = {"sft": 0.0, "text": 0.05, "local": 0.2, "sham": 0.2 - sham_effect, "global": 0.1}
    rows = []
    for seed in range(seeds):
        for arm in ARMS:
            value = base["relocation"] + lift[arm] + (0.01 * (seed % 3) if arm == "local" else 0.0)
            rows.append({"arm": arm, "seed": seed, "gold_logp": -0.7 + lift[arm], "relocation": value,
                         **{k: value for k in keys}})  # fmt: skip
    arms = {a: {k: 0.5 for k in ["relocation", *keys]} for a in ARMS}
    pilot = {
        "seed": 100,
        "sweep": [],
        "scores": {"0.0001": 0.5},
        "learning_rate": 1e-4,
        "arms": arms,
        "gap_points": gap,
    }
    return {"backbone": "smollm2-3l", "pilot": pilot, "rows": rows, "stopped": abs(gap) < 3,
            "pairs": {"text": {"text": 10}}, "seconds": {"this_run": 60.0, "empty_store": 120.0}}  # fmt: skip


def test_the_report_tables_each_measure_tests_three_contrasts_and_states_the_goal(tmp_path):
    config = ExperimentConfig(report=tmp_path / "experiment.md", results=tmp_path / "results.json")
    found = contrasts(results(5.0)["rows"], "relocation")
    assert [(c["arm"], c["other"]) for c in found] == [("local", "sham"), ("local", "text"), ("local", "global")]
    assert found[0]["test"].mean == pytest.approx(13.0) and found[0]["lo"] > 8
    write_report(results(5.0), config)
    report = config.report.read_text()
    assert report.count("| A2 text + local visual pairs | ") >= 13  # a row in every measure's table
    assert "**Goal (A2 − A3 ≥ 8 points with the adjusted interval above 0): met**" in report
    verdict = report.split("## Verdict")[1].split("##")[0].strip().splitlines()
    assert 1 <= len(verdict) <= 10
    # lift over A0's 30 points: A1 +5, A2 +20 (+1 on average: the seed wobble), A3 +20 - 12, A4 +10.
    assert "- From the SFT start (A0, mean 30.0 on the primary measure): A1 35.0, A2 51.0, A3 38.0, A4 40.0; " in report
    assert "0 of 4 trained arms below A0." in report
    config.report.unlink()
    write_report(results(5.0, sham_effect=0.02), config)
    assert "Goal (A2 − A3 ≥ 8 points with the adjusted interval above 0): not met" in config.report.read_text()


def test_a_pilot_under_the_stop_rule_says_so_and_tests_nothing(tmp_path):
    config = ExperimentConfig(report=tmp_path / "experiment.md", results=tmp_path / "results.json")
    stopped = results(1.2) | {"rows": []}
    write_report(stopped, config)
    report = config.report.read_text()
    assert "Stopped at the pilot: |A2 − A3| = 1.2 < 3 points" in report and "Holm p" not in report


def test_report_only_regenerates_the_report_from_the_saved_results(tmp_path):
    config = ExperimentConfig(report=tmp_path / "experiment.md", results=tmp_path / "results.json")
    save_results(config.results, results(5.0))
    (tmp_path / "run.yaml").write_text(json.dumps({"report": str(config.report), "results": str(config.results)}))
    args = argparse.Namespace(
        config=tmp_path / "run.yaml", smoke=False, full_depth=False, pilot=False, report_only=True
    )
    assert run_cli(args) == 0
    assert "Pre-registered contrasts" in config.report.read_text()
    (tmp_path / "bad.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match="bad.json: results lack the field 'pilot'"):
        load_results(tmp_path / "bad.json")
