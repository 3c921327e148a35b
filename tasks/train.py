"""Stage train: weighted DPO with LoRA on a preference set; the adapter is the artifact."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import task

from models import resident
from models.lifetime import die_with_parent, tied_to_this_process
from tasks import counters, ui
from tasks.catalog import TRAIN_COLUMNS
from tasks.config import ConfigError, TrainConfig
from tasks.counters import Counters
from tasks.launching import CODE_ROOT, LaunchPlan, launch_plan
from tasks.sets import load_pairs
from tasks.store import ArtifactStore, Keyed, Manifest, SourceSnapshot, code_version, file_digest, stage_task_options

STAGE = "train"
# The data-parallel launch settings decide how a run trains, so they count as its code.
# Named, not __name__: accelerate runs this module as __main__ on every rank.
CODE = code_version("tasks.train", data=("configs/accelerate/ddp.yaml", "configs/accelerate/cpu-ddp.yaml"))
ADAPTER = "adapter"
# How a run went, not what it made: timings and losses in the logs, where the base model was.
# The adapter (and a tiny model built inside) is the artifact's content.
VOLATILE = ("log_history.json", "metrics.json", "base_model.txt", "adapter/README.md")  # peft's model card


def train(
    store: ArtifactStore,
    config: TrainConfig,
    assemble: Keyed,
    preferences: Path | Sequence[Path],
    resume: bool = False,
    sft: Manifest | None = None,
    union: Sequence[Keyed] = (),
    init: Manifest | None = None,
) -> Manifest:
    """Weighted DPO with LoRA on a preference set; the adapter is the artifact.

    ``assemble`` identifies the preference set (its manifest, or a snapshot of a Parquet file)
    found at ``preferences``; ``union``, more sets trained on together with it (`mmedpo iterate`
    from the base: every round's set), found at the further ``preferences`` in order - a pair in
    several of them is trained on once. ``sft``, when given, is the sft artifact whose checkpoint
    ``config.model`` names (lineage; the checkpoint itself is identified by its content);
    ``init``, the train artifact whose adapter ``config.init_adapter`` names (training continues
    it: `mmedpo iterate` from the previous round; the DPO reference stays the base model).
    ``fit`` does the work, and is also what each process runs under ``accelerate launch``
    (``python -m tasks.train JOB.json``) for multi-GPU / DeepSpeed ZeRO-3 training. Checkpoints
    live under ``<store>/train/.checkpoints/<key>/`` so a killed run resumes (``resume=True``)
    from its last checkpoint; once the adapter is published they are removed
    (``keep_checkpoints`` keeps them).

    Output: ``adapter/`` (peft), ``metrics.json``, ``log_history.json``, ``base_model.txt``
    (and ``tiny-model/`` when no model is configured). Counters: ``pairs.in_set``,
    ``pairs.trained.<text|visual>``, ``pairs.skipped.<reason>`` (``duplicate``: in an earlier set
    of the union too), ``train.steps``, ``train.loss``, ``train.resumed``, ``train.last.<logged metric>``.
    """
    locations = [preferences] if isinstance(preferences, Path) else list(preferences)
    if len(locations) != 1 + len(union):
        raise ValueError(f"train: {len(locations)} preference locations for {1 + len(union)} sets")
    check_init_adapter(config)
    inputs = train_inputs(assemble, sft, union, init)
    checkpoints = checkpoint_dir(store, config, inputs)

    def build(out: Path) -> dict[str, float]:
        return build_adapter(out, config, locations, checkpoints, resume)

    manifest = store.run(STAGE, CODE, config, inputs, build, VOLATILE)
    if not config.keep_checkpoints:
        # Published: only an unfinished run resumes from them (for a 7B model, gigabytes per key).
        shutil.rmtree(checkpoints, ignore_errors=True)
    return manifest


def train_inputs(
    assemble: Keyed, sft: Manifest | None, union: Sequence[Keyed] = (), init: Manifest | None = None
) -> dict[str, Keyed]:
    """The stage's inputs, named as the train task's parameters are (a list's items as
    ``union.<i>``), so the store's key and Prefect's cache key agree."""
    inputs: dict[str, Keyed] = {"assemble": assemble}
    inputs.update({f"union.{i}": keyed for i, keyed in enumerate(union)})
    if sft is not None:
        inputs["sft"] = sft
    if init is not None:
        inputs["init"] = init
    return inputs


def check_init_adapter(config: TrainConfig) -> None:
    """An adapter to continue must exist, sit on a configured model and have the configured shape
    (its own r, alpha and dropout are what trains: the config must not say otherwise)."""
    adapter = config.init_adapter
    if adapter is None:
        return
    if config.model is None:
        raise ConfigError("train.init_adapter needs train.model (the base model the adapter was trained on)")
    path = Path(adapter) / "adapter_config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"train.init_adapter: {path}: not a saved peft adapter ({exc})") from exc
    for field, key in (("lora_r", "r"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout")):
        if saved.get(key) != getattr(config, field):
            raise ConfigError(
                f"train.init_adapter: {path} has {key}={saved.get(key)} but train.{field} is {getattr(config, field)}"
            )


def checkpoint_dir(store: ArtifactStore, config: TrainConfig, inputs: dict[str, Keyed]) -> Path:
    return store.root / STAGE / ".checkpoints" / store.key(STAGE, CODE, config, inputs)[0]


def preference_snapshot(path: Path) -> SourceSnapshot:
    """A Parquet file given directly (not through the store) is identified by its bytes."""
    return SourceSnapshot(name="assemble", key=file_digest(path)[:16])


def select_pairs(
    preferences: Path | Sequence[Path], config: TrainConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """The rows trained on (of one set, or of several in order), the usable rows held out of
    training (``train.heldout``), and counters for every row left out and why. A pair that an
    earlier set holds too (same id, texts and image contents) is a duplicate: a visual pair, the
    same in every round of `mmedpo iterate`, trains once."""
    locations = [preferences] if isinstance(preferences, Path) else list(preferences)
    rows = [row for location in locations for row in load_pairs(location, columns=TRAIN_COLUMNS).to_pylist()]
    counts = Counters()
    counts.add("pairs", "in_set", n=len(rows))
    counts.add("pairs", "trained", n=0)
    kept, held, seen = [], [], set()
    for row in rows:
        identity = (row["pair_id"], row["prompt"], row["chosen"], row["rejected"]) + tuple(
            Path(row[side]).name
            for side in ("chosen_image", "rejected_image")  # images are named by content
        )
        reason = "duplicate" if identity in seen else pair_problem(row, config)
        if reason:
            counts.add("pairs", "skipped", reason)
            continue
        seen.add(identity)
        if is_held_out(row["pair_id"], config.heldout):
            held.append(row)
            counts.add("pairs", "heldout", row["pair_type"])
            continue
        kept.append(row)
        counts.add("pairs", "trained", row["pair_type"])
    return kept, held, counts.as_dict()


def is_held_out(pair_id: str, share: float) -> bool:
    """Whether a pair falls in the held-out ``share``: by a hash of its id, so the same pairs in every run."""
    fraction = int.from_bytes(hashlib.sha256(pair_id.encode()).digest()[:8], "big") / 2**64
    return fraction < share


def pair_problem(row: dict[str, Any], config: TrainConfig) -> str | None:
    if row["split"] not in config.splits:
        return "split"
    if row["pair_type"] not in config.pair_types:
        return "pair_type"
    if not (isinstance(row["weight"], float) and math.isfinite(row["weight"]) and row["weight"] >= 0):
        return "bad_weight"
    if not Path(row["chosen_image"]).is_file() or not Path(row["rejected_image"]).is_file():
        return "missing_image"
    if row["pair_type"] == "text" and row["chosen"] == row["rejected"]:
        return "identical_answers"
    if row["pair_type"] == "visual" and row["chosen_image"] == row["rejected_image"]:
        return "identical_images"
    return None


def build_adapter(
    out: Path, config: TrainConfig, preferences: Sequence[Path], checkpoints: Path, resume: bool
) -> dict[str, float]:
    pairs, heldout, counts = select_pairs(preferences, config)
    if not pairs:
        raise ValueError(f"{', '.join(map(str, preferences))}: no pair left to train on ({counts})")
    if not resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    job = {
        "config": config.model_dump(mode="json"),
        "pairs": pairs,
        "heldout": heldout,
        "out": str(out),
        "checkpoints": str(checkpoints),
        "resume": resume,
    }
    plan = launch_plan(config)
    # What sampling, judging or SAM left on the GPU in this process goes before training needs it.
    resident.release()
    if plan.in_process:
        metrics = fit(**job)
    else:
        metrics = launch(job, plan, checkpoints)
    return {**counts, **metrics}


def launch(job: dict[str, Any], plan: LaunchPlan, checkpoints: Path) -> dict[str, float]:
    """Run ``fit`` in every process of ``accelerate launch`` (DDP, DeepSpeed ZeRO-3, ...).

    The plan names the launch (``launch_plan``): ``train.accelerate_config``, else data parallel
    on this machine - one process per GPU, or gloo processes on the CPU
    (``configs/accelerate/cpu-ddp.yaml``). The ranks import this checkout's code, and die with
    the launcher, which dies with this process.
    """
    job_file = checkpoints / "job.json"
    job_file.write_text(json.dumps(job))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(plan.accelerate_config)]
    command += ["--num_processes", str(plan.processes)]
    if plan.port is not None:
        command += ["--main_process_port", str(plan.port)]
    command += ["-m", "tasks.train", str(job_file)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(CODE_ROOT), os.environ.get("PYTHONPATH")]))}
    if plan.visible_devices is not None:
        env["CUDA_VISIBLE_DEVICES"] = plan.visible_devices
    # Killed with this process (SIGKILL included), the launcher gets SIGTERM and stops the ranks.
    subprocess.run(tied_to_this_process(command), check=True, env=env)
    return json.loads((Path(job["out"]) / "metrics.json").read_text())


def fit(
    config: dict[str, Any],
    pairs: list[dict[str, Any]],
    out: str,
    checkpoints: str,
    resume: bool,
    heldout: Sequence[dict[str, Any]] = (),
) -> dict[str, float]:
    """Train the adapter and write it, with its metrics and log history, under ``out``; the
    ``heldout`` pairs are scored before and after (``heldout.<before|after>.<TRL metric>``)."""

    from models import precision, vlm
    from models.dpo import dpo_arguments, heldout_metrics, make_trainer
    from models.tiny import build_tiny_llava

    settings = TrainConfig.model_validate(config)
    device = precision.resolve(settings.device, "train")
    dtype = precision.dtype_for(device, settings.precision)
    # accelerate launch (DDP, ZeRO-3) runs WORLD_SIZE copies of this function; one without it.
    args = dpo_arguments(settings, checkpoints, processes=int(os.environ.get("WORLD_SIZE", "1")), device=device)
    model_path = settings.model
    if model_path is None:
        # Inside the artifact, so the adapter ships with the base model it was trained on. Under accelerate
        # launch every rank gets here: the first builds it, the others wait and load it.
        model_path = Path(out) / "tiny-model"
        with args.main_process_first(local=True, desc="tiny model"):
            if not (model_path / "config.json").is_file():
                build_tiny_llava(model_path, seed=settings.tiny_seed, extra_texts=[p["chosen"] for p in pairs])
    # Not moved: the Trainer places the weights (on this rank's GPU), or DeepSpeed shards them.
    policy = vlm.load(model_path, device=device, dtype=dtype, move=False, max_pixels=settings.max_pixels)
    reference = None
    if settings.ref_model is not None:
        reference = vlm.load(settings.ref_model, device=device, dtype=dtype, move=False).model
    trainer = make_trainer(settings, args, policy.model, reference, policy.processor, pairs, heldout)
    start = last_complete_checkpoint(Path(checkpoints)) if resume else None
    before = heldout_metrics(trainer) if heldout else {}  # the starting model: a resumed run loads later
    result = trainer.train(resume_from_checkpoint=str(start) if start is not None else None)
    metrics = Counters()
    for when, values in (("before", before), ("after", heldout_metrics(trainer) if heldout else {})):
        for key, value in values.items():
            metrics.set("heldout", when, key, value)
    metrics.set("train", "steps", value=trainer.state.global_step)
    metrics.set("train", "loss", value=result.training_loss)
    metrics.set("train", "resumed", value=start is not None)
    last: dict[str, float] = {}
    for entry in trainer.state.log_history:
        last.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
    for key, value in last.items():
        if ("/" in key or key == "loss") and not key.startswith("eval_"):  # eval_*: the held-out scores
            metrics.set("train", "last", key, value)
    # On every rank: under ZeRO-3 each holds a shard of the adapter, gathered here (rank 0 alone would
    # save empty tensors); under DDP and in one process it is the model's own state dict.
    state = trainer.accelerator.get_state_dict(trainer.model_wrapped)
    if trainer.accelerator.is_main_process:
        out_dir = Path(out)
        # A model built inside the artifact is recorded relative to it: the folder is renamed on publishing
        # (and its temporary name would make the adapter's bytes, so its digest, differ on every build).
        base = Path(model_path).resolve()
        recorded = str(base.relative_to(out_dir.resolve()) if base.is_relative_to(out_dir.resolve()) else base)
        for adapter in trainer.model.peft_config.values():
            adapter.base_model_name_or_path = recorded
        trainer.model.save_pretrained(out_dir / ADAPTER, state_dict=state)
        (out_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        (out_dir / "metrics.json").write_text(json.dumps(metrics.as_dict(), indent=1, sort_keys=True))
        (out_dir / "base_model.txt").write_text(f"{recorded}\n")
    trainer.accelerator.wait_for_everyone()
    return metrics.as_dict()


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


@task(**stage_task_options(STAGE, CODE, tags=["gpu"]))
def train_task(
    store_root: str,
    config: TrainConfig,
    assemble: Keyed,
    preferences: str | list[str],
    resume: bool = False,
    sft: Manifest | None = None,
    union: list[Keyed] | None = None,
    init: Manifest | None = None,
) -> Manifest:
    locations = [Path(preferences)] if isinstance(preferences, str) else [Path(p) for p in preferences]
    manifest = train(ArtifactStore(store_root), config, assemble, locations, resume, sft, union or (), init)
    ui.manifest_markdown(manifest)
    ui.table(f"{STAGE}-counts", counters.rows(manifest.counts), "train: pairs used, skipped and final metrics")
    return manifest


if __name__ == "__main__":
    # Entry point of each process under `accelerate launch` (see `launch`). torchrun starts each rank in a
    # process group of its own: without this, a killed launcher would leave the ranks training on their own.
    die_with_parent(signal.SIGKILL)
    fit(**json.loads(Path(sys.argv[1]).read_text()))
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        # Otherwise gloo may abort a finished rank at exit ("terminate called without an active exception"),
        # and the launcher then fails a run that succeeded.
        torch.distributed.destroy_process_group()
