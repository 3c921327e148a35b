"""pipeline and iterate, run as deployments, hand training to the `train` deployment (the gpu
pool) and wait for it; the parent frees what it holds first."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import prefect.deployments
import pytest
from prefect.runtime import deployment
from prefect.states import Completed, Failed

from flows.train import TRAIN_DEPLOYMENT, train_flow, train_on_gpu_pool
from models import resident
from tasks.config import RunConfig
from tests.support.configs import small_train
from tests.support.preference import preference_rows, write_train_pairs


def run_config(tmp_path: Path) -> tuple[RunConfig, str]:
    path = write_train_pairs(tmp_path / "preferences.parquet", preference_rows(tmp_path / "img"))
    return RunConfig(store=tmp_path / "store", train=small_train()), str(path)


@pytest.mark.slow
def test_inside_a_deployment_training_runs_as_the_gpu_pools_deployment(tmp_path, monkeypatch, prefect_harness):
    config, preferences = run_config(tmp_path)
    submitted = []

    def gpu_worker(name, parameters, timeout):
        # What a worker of the gpu pool does with the submitted run: the train flow, from JSON parameters.
        submitted.append((name, json.loads(json.dumps(parameters))))
        train_flow(RunConfig.model_validate(parameters["config"]), parameters["preferences"])
        return SimpleNamespace(name="gpu-run", state=Completed())

    monkeypatch.setattr(deployment, "get_id", lambda: "a-deployment-run")
    monkeypatch.setattr(prefect.deployments, "run_deployment", gpu_worker)
    resident.held("sam", lambda: object())

    manifest = train_on_gpu_pool(config, preferences)

    assert [name for name, _ in submitted] == [TRAIN_DEPLOYMENT]
    assert submitted[0][1]["preferences"] == preferences and submitted[0][1]["config"]["train"]["lora_r"] == 4
    assert manifest.stage == "train" and manifest.counts["train.steps"] == 2
    assert resident.release() == 0  # the parent had dropped its models before submitting


def test_a_failed_gpu_run_fails_the_parent(tmp_path, monkeypatch):
    config, preferences = run_config(tmp_path)
    monkeypatch.setattr(deployment, "get_id", lambda: "a-deployment-run")
    monkeypatch.setattr(
        prefect.deployments, "run_deployment", lambda *a, **k: SimpleNamespace(name="gpu-run", state=Failed())
    )
    with pytest.raises(RuntimeError, match="train/train run gpu-run ended Failed"):
        train_on_gpu_pool(config, preferences)
