"""`mmedpo train` killed with SIGKILL after a checkpoint, re-run with --resume: it finishes at the
same step, with the same adapter and loss history, as a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tasks.config import RunConfig, TrainConfig
from tasks.store import ArtifactStore, Keyed, stage_key
from tasks.train import CODE, STAGE, checkpoint_dir, preference_snapshot, train
from tests.support.configs import small_train
from tests.support.preference import preference_rows, write_train_pairs

REPO = Path(__file__).resolve().parents[2]
STEPS = 8
START_TIMEOUT_S = 600  # a loaded CI box takes long to import torch/transformers/trl


def write_set(folder: Path) -> Path:
    rows = preference_rows(folder / "img")
    return write_train_pairs(folder / "preferences.parquet", rows)


def mmedpo_train(config_path: Path, preferences: Path, log: Path, *extra: str) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    # The child reports to this session's Prefect server instead of starting one of its own.
    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PREFECT_LOCAL_STORAGE_PATH": str(log.parent / "results"),
    }
    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "train",
        "--config",
        str(config_path),
        "--preferences",
        str(preferences),
        *extra,
    ]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


class TrainRun(NamedTuple):
    preferences: Path
    config_path: Path
    snapshot: Keyed
    store: ArtifactStore
    key: str
    checkpoints: Path


def train_run(tmp_path: Path, name: str, settings: TrainConfig) -> TrainRun:
    """A written set and a run file for `mmedpo train`, with where its artifact and checkpoints go."""
    preferences = write_set(tmp_path)
    config = RunConfig(name=name, store=tmp_path / "store", train=settings)
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    snapshot = preference_snapshot(preferences)
    store = ArtifactStore(config.store)
    inputs = {"assemble": snapshot}
    key = stage_key(STAGE, CODE, settings, inputs)
    return TrainRun(preferences, config_path, snapshot, store, key, checkpoint_dir(store, settings, inputs))


def finished_checkpoints(folder: Path) -> list[int]:
    return sorted(int(p.parent.name.split("-")[1]) for p in folder.glob("checkpoint-*/trainer_state.json"))


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_then_resume_matches_an_uninterrupted_run(tmp_path, prefect_harness):
    settings = small_train(max_steps=STEPS, save_steps=1)
    preferences, config_path, snapshot, store, key, checkpoints = train_run(tmp_path, "crash", settings)

    first = mmedpo_train(config_path, preferences, tmp_path / "first.log")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not finished_checkpoints(checkpoints):
        assert first.poll() is None, (
            f"training ended before a checkpoint was written:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
        )
        assert time.monotonic() < deadline, "no checkpoint within the start timeout"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    killed_at = finished_checkpoints(checkpoints)
    assert killed_at and max(killed_at) < STEPS
    assert store.get(STAGE, key) is None  # nothing published by the killed run

    second = mmedpo_train(config_path, preferences, tmp_path / "second.log", "--resume")
    assert second.wait(timeout=START_TIMEOUT_S) == 0, (tmp_path / "second.log").read_text()[-3000:]
    resumed = store.get(STAGE, key)
    assert resumed is not None and resumed.counts["train.resumed"] == 1 and resumed.counts["train.steps"] == STEPS

    uninterrupted = train(ArtifactStore(tmp_path / "store2"), settings, snapshot, preferences)
    assert uninterrupted.key == key and uninterrupted.counts["train.steps"] == resumed.counts["train.steps"]
    losses = {
        h["step"]: h["loss"] for h in json.loads(uninterrupted.file("log_history.json").read_text()) if "loss" in h
    }
    resumed_losses = {
        h["step"]: h["loss"] for h in json.loads(resumed.file("log_history.json").read_text()) if "loss" in h
    }
    assert sorted(resumed_losses) == list(range(1, STEPS + 1))
    assert resumed_losses == pytest.approx(losses, rel=1e-4)
    expected = load_file(uninterrupted.file("adapter/adapter_model.safetensors"))
    got = load_file(resumed.file("adapter/adapter_model.safetensors"))
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
