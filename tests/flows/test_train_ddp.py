"""`train.num_processes: 2` through the train flow's own launcher (2 gloo ranks on the CPU):
killed with SIGKILL after a checkpoint in its second epoch, the ranks die with it; re-run with
--resume it ends with the adapter and losses of a 2-process run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasks.store import ArtifactStore
from tasks.train import STAGE, train
from tests.flows.test_train_crash_resume import START_TIMEOUT_S, finished_checkpoints, mmedpo_train, train_run
from tests.support.configs import small_train

STEPS = 8  # 8 pairs, 2 per micro-batch on each of 2 ranks: 2 steps per epoch, 4 epochs


def processes_naming(text: str) -> list[int]:
    """Pids of the live processes whose command line contains ``text`` (a path unique to the test)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = next(line for line in (entry / "status").read_text().splitlines() if line.startswith("State:"))
        except (OSError, StopIteration):
            continue
        if text in command and "zombie" not in state:
            pids.append(int(entry.name))
    return pids


@pytest.mark.slow
def test_ddp_ranks_die_with_a_killed_run_and_resume_matches_an_uninterrupted_run(tmp_path, prefect_harness):
    settings = small_train(num_processes=2, max_steps=STEPS, save_steps=1)
    preferences, config_path, snapshot, store, key, checkpoints = train_run(tmp_path, "ddp", settings)
    job = str(checkpoints / "job.json")

    first = mmedpo_train(config_path, preferences, tmp_path / "first.log")
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        # Step 3 is the first step of the second epoch: the resumed run must pick up that epoch's order.
        while max(finished_checkpoints(checkpoints), default=0) < 3:
            assert first.poll() is None, f"ended before step 3:\n{(tmp_path / 'first.log').read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no checkpoint within the start timeout"
            time.sleep(0.05)
        ranks = processes_naming(job)
        killed_at = max(finished_checkpoints(checkpoints))
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait() == -signal.SIGKILL
        assert len(ranks) == 3  # the launcher and its 2 ranks, all running the job
        deadline = time.monotonic() + 60
        while processes_naming(job) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert processes_naming(job) == []
    finally:
        for pid in processes_naming(job):  # only if the assertion above failed
            os.kill(pid, signal.SIGKILL)
    # Nothing trained on after the kill (at most the checkpoint being written then was finished).
    assert 3 <= killed_at <= max(finished_checkpoints(checkpoints)) <= killed_at + 1 < STEPS
    assert store.get(STAGE, key) is None

    second = mmedpo_train(config_path, preferences, tmp_path / "second.log", "--resume")
    assert second.wait(timeout=START_TIMEOUT_S) == 0, (tmp_path / "second.log").read_text()[-3000:]
    resumed = store.get(STAGE, key)
    assert resumed.counts["train.resumed"] == 1 and resumed.counts["train.steps"] == STEPS
    assert resumed.counts["pairs.trained"] == 8

    uninterrupted = train(ArtifactStore(tmp_path / "store2"), settings, snapshot, preferences)
    assert uninterrupted.key == key and not uninterrupted.counts["train.resumed"]

    def losses(manifest) -> dict[int, float]:
        return {h["step"]: h["loss"] for h in json.loads(manifest.file("log_history.json").read_text()) if "loss" in h}

    assert sorted(losses(resumed)) == list(range(1, STEPS + 1))
    assert losses(resumed) == pytest.approx(losses(uninterrupted), rel=1e-4)
    expected = load_file(uninterrupted.file("adapter/adapter_model.safetensors"))
    got = load_file(resumed.file("adapter/adapter_model.safetensors"))
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-6)
