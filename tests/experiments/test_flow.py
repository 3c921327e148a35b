"""The grounding experiment end to end at toy size on the smoke backbone: the pilot's rate choice, every
arm of every seed through the product's flows, the saved results and the report."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from experiments.grounding.config import ARMS, ExperimentConfig, GroundingDataConfig, fixed_train, smoke
from experiments.grounding.flow import experiment_flow
from experiments.grounding.report import load_results


def toy_config(tmp_path: Path, **update) -> ExperimentConfig:
    config = smoke(ExperimentConfig(store=tmp_path / "experiment" / "artifacts"))
    backbone = config.backbone.model_copy(
        update={
            "sft": config.backbone.sft.model_copy(update={"epochs": 1}),
            "train": fixed_train(max_steps=2),
            "learning_rates": [1e-4, 1e-3],
        }
    )
    return config.model_copy(
        update={"backbone": backbone, "data": GroundingDataConfig(n_train=16, n_val=4, n_test=6, n_sft=16), **update}
    )


@pytest.mark.slow
def test_every_arm_of_every_seed_is_trained_measured_saved_and_reported(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    config = toy_config(tmp_path, name="toyrun")
    assert config.workers == 2

    results = experiment_flow(config)

    # The pilot and each seed's SFT and arms ran as flows in the worker processes, on the test's own server.
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(like_="experiment-toyrun-")))
    assert sorted(run.name for run in runs) == [
        "experiment-toyrun-pilot",
        "experiment-toyrun-s0-arms",
        "experiment-toyrun-s0-sft",
        "experiment-toyrun-s1-arms",
        "experiment-toyrun-s1-sft",
    ]
    assert all(run.state.is_completed() for run in runs)

    pilot = results["pilot"]
    assert pilot["learning_rate"] in (1e-4, 1e-3) and len(pilot["sweep"]) == 2 * 2  # A1 and A2 at each rate
    assert set(pilot["arms"]) == set(ARMS) and math.isfinite(pilot["gap_points"])
    rows = results["rows"]
    assert [(r["seed"], r["arm"]) for r in rows] == [(s, a) for s in (0, 1) for a in ARMS]
    for row in rows:
        assert 0.0 <= row["relocation"] <= 1.0 and row["relocation_items"] == 6
        assert row["steps"] == (0 if row["arm"] == "sft" else 2)
    by = {(r["seed"], r["arm"]): r for r in rows}
    # Every trained arm moved the model away from its SFT start, and the sham trained on other pairs than A2.
    assert all(by[0, a]["gold_logp"] != by[0, "sft"]["gold_logp"] for a in ("text", "local", "sham", "global"))
    assert by[0, "sham"]["gold_logp"] != by[0, "local"]["gold_logp"]
    # The text-only set has no visual pair; the others as many visual pairs as text pairs.
    pairs = results["pairs"]
    assert set(pairs["text"]) == {"text"} and pairs["sham"]["visual"] == pairs["local"]["visual"] > 0
    assert load_results(config.results)["rows"] == rows
    report = config.report.read_text()
    assert "Pre-registered contrasts" in report and "Goal (A2 − A3 ≥ 8 points" in report
