"""Stage train: weighted DPO with LoRA on a preference set; the adapter is the artifact.

``train`` is the stage (store-keyed on the config and the preference set's key);
``fit`` does the work and is also what each process runs under ``accelerate launch``
(``python -m tasks.train JOB.json``) for multi-GPU / DeepSpeed ZeRO-3 training.
Checkpoints live under ``<store>/train/.checkpoints/<key>/`` so a killed run resumes
(``resume=True``) from its last checkpoint; the published artifact holds the adapter,
the log history and the counters.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from prefect import task

from tasks import schemas, ui
from tasks.config import TrainConfig
from tasks.sets import load_pairs
from tasks.store import ArtifactStore, Keyed, Manifest, SourceSnapshot, code_version, stage_key, stage_task_options

STAGE = "train"
CODE = code_version(__name__, "models.dpo", "models.vlm", "models.tiny", "tasks.sets")
ADAPTER = "adapter"
PROJECTOR = "multi_modal_projector"  # LLaVA's vision -> text projector module


def train(store: ArtifactStore, config: TrainConfig, assemble: Keyed, preferences: Path, resume: bool = False) -> Manifest:
    """``assemble`` identifies the preference set (its manifest, or a snapshot of a Parquet file)."""
    checkpoints = checkpoint_dir(store, config, assemble)
    return store.run(STAGE, CODE, config, {"assemble": assemble}, lambda out: build_adapter(out, config, preferences, checkpoints, resume))


def checkpoint_dir(store: ArtifactStore, config: TrainConfig, assemble: Keyed) -> Path:
    return store.root / STAGE / ".checkpoints" / stage_key(STAGE, CODE, config, {"assemble": assemble})


def preference_snapshot(path: Path) -> SourceSnapshot:
    """A Parquet file given directly (not through the store) is identified by its bytes."""
    return SourceSnapshot(name="assemble", key=hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16])


def select_pairs(preferences: Path, config: TrainConfig) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """The rows trained on, and counters for every row left out and why."""
    rows = load_pairs(preferences, schema=schemas.TRAIN_PAIRS).to_pylist()
    counts: dict[str, float] = {"pairs_in_set": len(rows)}
    kept = []
    for row in rows:
        reason = pair_problem(row, config)
        if reason:
            counts[f"skipped_{reason}"] = counts.get(f"skipped_{reason}", 0) + 1
            continue
        kept.append(row)
        counts[f"pairs_{row['pair_type']}"] = counts.get(f"pairs_{row['pair_type']}", 0) + 1
    counts["pairs_trained"] = len(kept)
    return kept, counts


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


def build_adapter(out: Path, config: TrainConfig, preferences: Path, checkpoints: Path, resume: bool) -> dict[str, float]:
    pairs, counts = select_pairs(preferences, config)
    if not pairs:
        raise ValueError(f"{preferences}: no pair left to train on ({counts})")
    if not resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    job = {"config": config.model_dump(mode="json"), "pairs": pairs, "out": str(out), "checkpoints": str(checkpoints), "resume": resume}
    if config.accelerate_config is None:
        metrics = fit(**job)
    else:
        metrics = launch(job, config, checkpoints)
    return {**counts, **metrics}


def launch(job: dict[str, Any], config: TrainConfig, checkpoints: Path) -> dict[str, float]:
    """Run ``fit`` in every process of ``accelerate launch`` (DDP, DeepSpeed ZeRO-3, ...)."""
    job_file = checkpoints / "job.json"
    job_file.write_text(json.dumps(job))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config.accelerate_config)]
    if config.num_processes is not None:
        command += ["--num_processes", str(config.num_processes)]
    command += ["-m", "tasks.train", str(job_file)]
    subprocess.run(command, check=True)
    return json.loads((Path(job["out"]) / "metrics.json").read_text())


def fit(config: dict[str, Any], pairs: list[dict[str, Any]], out: str, checkpoints: str, resume: bool) -> dict[str, float]:
    """Train the adapter and write it, with its metrics and log history, under ``out``."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig

    from models import vlm
    from models.dpo import ImagePairCollator, WeightedDPOTrainer, preference_example
    from models.tiny import build_tiny_llava

    settings = TrainConfig.model_validate(config)
    on_gpu = torch.cuda.is_available()
    # The arguments come first: under DeepSpeed ZeRO-3 they make from_pretrained shard while loading.
    args = DPOConfig(
        output_dir=checkpoints,
        beta=settings.beta,
        loss_type=settings.loss_type,
        loss_weights=settings.loss_weights,
        learning_rate=settings.learning_rate,
        num_train_epochs=settings.epochs,
        max_steps=settings.max_steps,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=settings.gradient_accumulation,
        warmup_steps=settings.warmup_ratio,  # a float below 1 is a share of the steps
        lr_scheduler_type=settings.scheduler,
        max_length=settings.max_length,
        gradient_checkpointing=settings.gradient_checkpointing,
        bf16=on_gpu,
        use_cpu=not on_gpu,
        save_strategy="steps",
        save_steps=settings.save_steps,
        save_total_limit=2,
        logging_steps=settings.logging_steps,
        seed=settings.seed,
        remove_unused_columns=False,  # the collator needs the image paths, weights and pair kinds
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    model_path = settings.model
    if model_path is None:
        # Inside the artifact, so the adapter ships with the base model it was trained on.
        model_path = build_tiny_llava(Path(out) / "tiny-model", seed=settings.tiny_seed, extra_texts=[p["chosen"] for p in pairs])
    policy = vlm.load(model_path, device="cpu" if not on_gpu else None, move=False)
    reference = vlm.load(settings.ref_model, move=False).model if settings.ref_model is not None else None
    dataset = Dataset.from_list(
        [
            preference_example(p["prompt"], p["chosen"], p["rejected"], p["chosen_image"], p["rejected_image"], p["weight"], p["pair_type"])
            for p in pairs
        ]
    )
    peft = LoraConfig(
        r=settings.lora_r,
        lora_alpha=settings.lora_alpha,
        lora_dropout=settings.lora_dropout,
        target_modules=settings.lora_target,
        # A fully trained copy of the projector is saved with the adapter.
        modules_to_save=[PROJECTOR] if settings.projector_lr is not None else None,
    )
    trainer = WeightedDPOTrainer(
        model=policy.model,
        ref_model=reference,
        args=args,
        train_dataset=dataset,
        processing_class=policy.processor,
        data_collator=ImagePairCollator(policy.processor, max_length=settings.max_length),
        peft_config=peft,
        anchor_coef=settings.anchor_coef,
        anchor_margin=settings.anchor_margin,
        projector_lr=settings.projector_lr,
        projector_module=PROJECTOR,
    )
    start = last_complete_checkpoint(Path(checkpoints)) if resume else None
    result = trainer.train(resume_from_checkpoint=str(start) if start is not None else None)
    metrics = {
        "steps": float(trainer.state.global_step),
        "train_loss": float(result.training_loss),
        "resumed": float(start is not None),
    }
    last = {}
    for entry in trainer.state.log_history:
        last.update({k: v for k, v in entry.items() if isinstance(v, (int, float))})
    metrics.update({f"last/{k}": float(v) for k, v in last.items() if "/" in k or k == "loss"})
    if trainer.accelerator.is_main_process:
        out_dir = Path(out)
        trainer.model.save_pretrained(out_dir / ADAPTER)
        (out_dir / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
        # A model built inside the artifact is recorded relative to it: the folder is renamed on publishing.
        base = Path(model_path).resolve()
        (out_dir / "base_model.txt").write_text(f"{base.relative_to(out_dir.resolve()) if base.is_relative_to(out_dir.resolve()) else base}\n")
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


@task(**stage_task_options(STAGE, CODE, tags=["gpu"]))
def train_task(store_root: str, config: TrainConfig, assemble: Keyed, preferences: str, resume: bool = False) -> Manifest:
    manifest = train(ArtifactStore(store_root), config, assemble, Path(preferences), resume)
    ui.manifest_markdown(manifest)
    ui.table(f"{STAGE}-counts", ui.counts_rows(manifest.counts), "train: pairs used, skipped and final metrics")
    return manifest


if __name__ == "__main__":
    # Entry point of each process under `accelerate launch` (see `launch`).
    fit(**json.loads(Path(sys.argv[1]).read_text()))
