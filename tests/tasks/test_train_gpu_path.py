"""The train stage's GPU path, checked on the CPU: bf16 weights with fp32 masters for the
projector, the launch plan on a multi-GPU node, the device setting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from models.launching import launch_plan
from tasks.config import ConfigError
from tasks.store import ArtifactStore
from tasks.train import preference_snapshot, train
from tests.support.configs import small_train
from tests.support.preference import preference_rows, write_train_pairs

PROJECTOR = "multi_modal_projector"


def test_a_bf16_run_moves_the_projector_at_the_papers_learning_rate(tmp_path: Path):
    """2 steps at lr 2e-5 in bf16: an update below half a bf16 ulp would leave most weights where
    they were; fp32 master weights move nearly all of them."""
    path = write_train_pairs(tmp_path / "preferences.parquet", preference_rows(tmp_path / "img"))
    config = small_train(
        precision="bf16", learning_rate=1e-7, projector_lr=2e-5, scheduler="constant", warmup_ratio=0.0
    )
    manifest = train(ArtifactStore(tmp_path / "store"), config, preference_snapshot(path), path)

    assert manifest.counts["train.steps"] == 2
    base = load_file(manifest.file("tiny-model/model.safetensors"))
    adapter = load_file(manifest.file("adapter/adapter_model.safetensors"))
    trained = {name: value for name, value in adapter.items() if PROJECTOR in name}
    assert trained
    changed = total = 0
    for name, value in trained.items():
        start = next(v for k, v in base.items() if PROJECTOR in k and k.endswith(name.split(PROJECTOR)[1]))
        start = start.to(torch.bfloat16).float()  # where the bf16 run began
        changed += int((value != start).sum())
        total += value.numel()
    assert changed / total >= 0.9, f"{changed} of {total} projector weights moved"
    assert all(value.dtype == torch.float32 for value in trained.values())  # the masters, saved


def gpus(monkeypatch: pytest.MonkeyPatch, count: int, usable: bool) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: usable)


def test_num_processes_auto_is_one_ddp_rank_per_visible_gpu_on_a_free_port(monkeypatch: pytest.MonkeyPatch):
    gpus(monkeypatch, 8, usable=True)
    eight = small_train(num_processes="auto", batch_size=1, global_batch_size=8, gradient_accumulation=None)
    plan = launch_plan(eight)
    assert (plan.in_process, plan.processes, plan.accelerate_config.name) == (False, 8, "ddp.yaml")
    other = launch_plan(eight)
    assert plan.port and other.port and plan.port != other.port  # two runs on one node
    # One process on a node of several GPUs: launched on the first GPU alone (no nn.DataParallel).
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    single = launch_plan(small_train(num_processes=1))
    assert (single.in_process, single.processes, single.visible_devices) == (False, 1, "3")
    with pytest.raises(ConfigError, match="global_batch_size 4 is not a multiple of 8 processes"):
        launch_plan(small_train(num_processes="auto", batch_size=1, global_batch_size=4, gradient_accumulation=None))
    # The CPU, or device: cpu on a GPU node: in this process.
    assert launch_plan(small_train(num_processes="auto", device="cpu")).in_process


@pytest.mark.slow
def test_a_two_gpu_count_with_num_processes_auto_trains_two_gloo_ranks(tmp_path: Path, monkeypatch):
    from models import training

    gpus(monkeypatch, 2, usable=False)  # counted, not usable: the ranks are gloo processes on the CPU
    plans = []
    real_launch = training.launch
    monkeypatch.setattr(training, "launch", lambda job, plan: plans.append(plan) or real_launch(job, plan))
    path = write_train_pairs(tmp_path / "preferences.parquet", preference_rows(tmp_path / "img"))
    config = small_train(num_processes="auto", batch_size=1, global_batch_size=2, gradient_accumulation=None)
    manifest = train(ArtifactStore(tmp_path / "store"), config, preference_snapshot(path), path)

    assert [(p.processes, p.accelerate_config.name) for p in plans] == [(2, "cpu-ddp.yaml")]
    assert manifest.counts["train.steps"] == 2 and manifest.counts["train.loss"] > 0
    adapter = load_file(manifest.file("adapter/adapter_model.safetensors"))
    assert any("lora_B" in name and bool(value.abs().sum() > 0) for name, value in adapter.items())


def test_device_cuda_without_a_gpu_exits_2_with_one_line_naming_the_field(tmp_path: Path, capsys):
    from flows.cli import main

    config = tmp_path / "run.yaml"
    config.write_text("train:\n  device: cuda\n")
    assert main(["config", "show", "--config", str(config)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "train.device" in error and "no usable GPU" in error
