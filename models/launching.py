"""Where the training program (models/training.py) runs: in the calling process, or as ranks of
``accelerate launch`` (DDP on every GPU of a node, ZeRO-3, several nodes), decided and checked
before any process starts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from models.lifetime import free_port
from models.settings import LaunchSettings

CODE_ROOT = Path(__file__).resolve().parents[1]
# What `train.num_processes` launches without a `train.accelerate_config`.
DATA_PARALLEL = {"gpu": CODE_ROOT / "models/accelerate/ddp.yaml", "cpu": CODE_ROOT / "models/accelerate/cpu-ddp.yaml"}


@dataclass(frozen=True)
class LaunchPlan:
    """How ``fit`` runs: in this process, or under ``accelerate launch`` with
    ``processes`` ranks of ``accelerate_config`` (``port``: this run's rendezvous port, on one machine)."""

    in_process: bool
    processes: int
    accelerate_config: Path | None = None
    port: int | None = None
    visible_devices: str | None = None


def launch_plan(config: LaunchSettings) -> LaunchPlan:
    """Where ``fit`` runs, checked before any process starts.

    ``num_processes: auto`` is one rank per visible GPU (1 on the CPU), so an 8-GPU node trains
    DDP on all 8: in-process training there would meet TRL's refusal of ``nn.DataParallel``.
    One process on a node of several GPUs runs under the launcher on the first GPU alone, for the
    same reason. The global batch must divide over the ranks, and the accelerate config must
    read: the config's own checks raise its one-line error otherwise.
    """
    from models.precision import check, gpu_usable

    gpus = torch_gpu_count() if check(config.device) != "cpu" else 0
    machines, declared = config.accelerate_shape()
    if config.num_processes == "auto":
        processes = declared if machines > 1 else max(1, gpus)
    else:
        processes = config.num_processes or declared
    config.accumulation_steps(processes)  # raises ConfigError when the global batch does not divide
    if config.accelerate_config is None and processes == 1 and gpus <= 1:
        return LaunchPlan(in_process=True, processes=1)
    # Without a usable GPU the ranks are gloo processes on the CPU.
    accelerate_config = config.accelerate_config or DATA_PARALLEL["gpu" if gpu_usable() else "cpu"]
    return LaunchPlan(
        in_process=False,
        processes=processes,
        accelerate_config=accelerate_config,
        port=free_port() if machines == 1 else None,
        visible_devices=first_visible_gpu() if processes == 1 and gpus > 1 else None,
    )


def torch_gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def first_visible_gpu() -> str:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[0] if visible else "0"
