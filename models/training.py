"""The training program of weighted DPO: ``fit`` trains the adapter, in this process or in every
rank of ``accelerate launch`` (``python -m models.training JOB.json``, see ``launch``).

A rank imports nothing of tasks/: the job file carries plain values (the settings ``fit`` reads,
the pairs, the output folders), written by the train stage (tasks/train.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models import resident
from models.launching import CODE_ROOT, LaunchPlan
from models.lifetime import die_with_parent, tied_to_this_process
from models.settings import TrainSettings

ADAPTER = "adapter"
# What fit reads of a train config: the members models/settings.py declares, so the two cannot drift.
MEMBERS = tuple(TrainSettings.__annotations__)
# Written back as Path: the job file holds them as strings.
PATHS = tuple(name for name, kind in TrainSettings.__annotations__.items() if "Path" in str(kind))


@dataclass(frozen=True)
class FitSettings:
    """A train config's ``MEMBERS`` as plain values, read by attribute as the config's own, with
    the gradient accumulation resolved for the ``processes`` the launch plan starts (a config's
    rule, kept in tasks/config)."""

    values: dict[str, Any]
    processes: int
    accumulation: int

    @classmethod
    def of(cls, config: TrainSettings, processes: int) -> FitSettings:
        values = {name: getattr(config, name) for name in MEMBERS}
        return cls(values=values, processes=processes, accumulation=config.accumulation_steps(processes))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FitSettings:
        values = {
            name: Path(value) if name in PATHS and value is not None else value
            for name, value in data["values"].items()
        }
        missing = [name for name in MEMBERS if name not in values]
        if missing:
            raise KeyError(f"settings lack {', '.join(missing)}")
        return cls(values=values, processes=int(data["processes"]), accumulation=int(data["accumulation"]))

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("values", {})
        if name not in values:
            raise AttributeError(name)
        return values[name]

    def accumulation_steps(self, processes: int) -> int:
        # A rank started by hand (another node) with a different count would train another global batch.
        if processes != self.processes:
            raise ValueError(f"the job was planned for {self.processes} processes, not {processes}")
        return self.accumulation


@dataclass(frozen=True)
class Job:
    """One training run: the pairs to train on, those held out (scored before and after, never
    trained on), where the adapter and the checkpoints go."""

    settings: FitSettings
    pairs: list[dict[str, Any]]
    out: Path
    checkpoints: Path
    resume: bool
    heldout: list[dict[str, Any]] = field(default_factory=list)

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), default=_path_text))

    @classmethod
    def read(cls, path: Path) -> Job:
        try:
            job = json.loads(path.read_text())
            return cls(
                settings=FitSettings.from_json(job["settings"]),
                pairs=job["pairs"],
                out=Path(job["out"]),
                checkpoints=Path(job["checkpoints"]),
                resume=bool(job["resume"]),
                heldout=job["heldout"],
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a training job ({exc})") from exc


def _path_text(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not a job file value")


def run(job: Job, plan: LaunchPlan) -> dict[str, float]:
    """Train as ``plan`` says (models/launching.py): ``fit`` in this process, or ``launch``."""
    # What sampling, judging or SAM left on the GPU in this process goes before training needs it.
    resident.release()
    return fit(job) if plan.in_process else launch(job, plan)


def launch(job: Job, plan: LaunchPlan) -> dict[str, float]:
    """Run ``fit`` in every process of ``accelerate launch`` (DDP, DeepSpeed ZeRO-3, ...).

    The plan names the launch: ``train.accelerate_config``, else data parallel on this machine -
    one process per GPU, or gloo processes on the CPU (``models/accelerate/cpu-ddp.yaml``). The
    ranks import this checkout's code, and die with the launcher, which dies with this process.
    """
    job_file = job.checkpoints / "job.json"
    job.write(job_file)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(plan.accelerate_config)]
    command += ["--num_processes", str(plan.processes)]
    if plan.port is not None:
        command += ["--main_process_port", str(plan.port)]
    command += ["-m", "models.training", str(job_file)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CODE_ROOT), os.environ.get("PYTHONPATH")]))}
    if plan.visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = plan.visible_devices
    # Killed with this process (SIGKILL included), the launcher gets SIGTERM and stops the ranks.
    subprocess.run(tied_to_this_process(command), check=True, env=env)
    return json.loads((job.out / "metrics.json").read_text())


def fit(job: Job) -> dict[str, float]:
    """Train the adapter and write it, with its metrics and log history, under ``job.out``; the
    held-out pairs are scored before and after (``heldout.<before|after>.<TRL metric>``)."""
    from models import precision, vlm
    from models.dpo import dpo_arguments, heldout_metrics, make_trainer
    from models.tiny import build_tiny_llava

    settings, pairs = job.settings, job.pairs
    device = precision.resolve(settings.device, "train")
    dtype = precision.dtype_for(device, settings.precision)
    # accelerate launch (DDP, ZeRO-3) runs WORLD_SIZE copies of this function; one without it.
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    args = dpo_arguments(settings, str(job.checkpoints), processes=processes, device=device)
    model_path = settings.model
    if model_path is None:
        # Inside the artifact, so the adapter ships with the base model it was trained on. Under accelerate
        # launch every rank gets here: the first builds it, the others wait and load it.
        model_path = job.out / "tiny-model"
        with args.main_process_first(local=True, desc="tiny model"):
            if not (model_path / "config.json").is_file():
                build_tiny_llava(model_path, seed=settings.tiny_seed, extra_texts=[p["chosen"] for p in pairs])
    # Not moved: the Trainer places the weights (on this rank's GPU), or DeepSpeed shards them.
    policy = vlm.load(model_path, device=device, dtype=dtype, move=False, max_pixels=settings.max_pixels)
    reference = None
    if settings.ref_model is not None:
        reference = vlm.load(settings.ref_model, device=device, dtype=dtype, move=False).model
    trainer = make_trainer(settings, args, policy.model, reference, policy.processor, pairs, job.heldout)
    start = last_complete_checkpoint(job.checkpoints) if job.resume else None
    before = heldout_metrics(trainer) if job.heldout else {}  # the starting model: a resumed run loads later
    result = trainer.train(resume_from_checkpoint=str(start) if start is not None else None)
    after = heldout_metrics(trainer) if job.heldout else {}
    metrics = {
        **{f"heldout.before.{key}": float(value) for key, value in before.items()},
        **{f"heldout.after.{key}": float(value) for key, value in after.items()},
        "train.steps": float(trainer.state.global_step),
        "train.loss": float(result.training_loss),
        "train.resumed": float(start is not None),
    }
    last: dict[str, float] = {}
    for entry in trainer.state.log_history:
        last.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
    # eval_*: the held-out scores, reported above as heldout.*
    trained = {
        key: value for key, value in last.items() if ("/" in key or key == "loss") and not key.startswith("eval_")
    }
    metrics.update({f"train.last.{key}": float(value) for key, value in trained.items()})
    metrics = dict(sorted(metrics.items()))
    # On every rank: under ZeRO-3 each holds a shard of the adapter, gathered here (rank 0 alone would
    # save empty tensors); under DDP and in one process it is the model's own state dict.
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.accelerator.is_main_process:
        out_dir = job.out
        # A model built inside the artifact is recorded relative to it: the folder is renamed on publishing
        # (and its temporary name would make the adapter's bytes, so its digest, differ on every build).
        base = Path(model_path).resolve()
        recorded = str(base.relative_to(out_dir.resolve()) if base.is_relative_to(out_dir.resolve()) else base)
        for adapter in trainer.model.peft_config.values():
            adapter.base_model_name_or_path = recorded
        trainer.model.save_pretrained(out_dir / ADAPTER, state_dict=state)
        (out_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        (out_dir / "base_model.txt").write_text(f"{recorded}\n")
    trainer.accelerator.wait_for_everyone()
    return metrics


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The newest checkpoint the Trainer finished writing, or None.

    The Trainer writes trainer_state.json last and not atomically, so a run killed while saving
    leaves a newer checkpoint without it; transformers would resume from that one and fail.
    Such partial checkpoints are removed, so the resumed run can save its own in their place.
    """
    complete = None
    for path in sorted(folder.glob("checkpoint-*"), key=_checkpoint_step, reverse=True):
        if (path / "trainer_state.json").is_file():
            complete = path
            break
        shutil.rmtree(path, ignore_errors=True)  # every process may try; the first one wins
    return complete


def _checkpoint_step(path: Path) -> int:
    suffix = path.name.removeprefix("checkpoint-")
    return int(suffix) if suffix.isdigit() else -1


if __name__ == "__main__":
    # Entry point of each process under `accelerate launch` (see `launch`). torchrun starts each rank in a
    # process group of its own: without this, a killed launcher would leave the ranks training on their own.
    die_with_parent(signal.SIGKILL)
    fit(Job.read(Path(sys.argv[1])))
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Otherwise gloo may abort a finished rank at exit ("terminate called without an active exception"),
        # and the launcher then fails a run that succeeded.
        torch.distributed.destroy_process_group()
