"""Typed configuration: one model per stage, one RunConfig per run (one YAML file).

Every stage config is frozen and forbids unknown fields, so a typo in a run file is an
error naming the field rather than a silently ignored option (and a silently unchanged
cache key).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError


class StageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


SourceFormat = Literal["slake", "vqa-rad", "r2gen", "pathvqa", "jsonl"]


class SourceConfig(StageConfig):
    """One data set to ingest, in its on-disk format as distributed."""

    format: SourceFormat
    root: Path = Field(description="The data set's folder (for jsonl: the .jsonl file or a folder of them)")
    name: str | None = Field(default=None, description="Data set name recorded per sample; defaults by format")
    splits: list[str] | None = Field(default=None, description="Keep only these splits; all when unset")


class IngestConfig(StageConfig):
    sources: list[SourceConfig] = Field(default_factory=list)
    languages: list[str] = Field(default=["en"], description="Question languages kept; other rows go to rejects")
    max_image_pixels: int = Field(default=50_000_000, description="Larger images are rejected (decompression bombs)")
    min_image_side: int = Field(default=16, description="Images with a smaller side are rejected as unusable")
    dicom_window: bool = Field(default=True, description="Apply the VOI window stored in a DICOM file")


class EvaluateConfig(StageConfig):
    """Answer a test split with the base model (and a trained adapter) and score it."""

    model: Path | None = Field(
        default=None,
        description="Base model: a local transformers checkpoint folder. Unset: the evaluated train artifact's "
        "base model (a checkpoint shipped inside it, else the local path it records)",
    )
    splits: list[str] = Field(default=["test"], description="Sample splits evaluated")
    datasets: list[str] | None = Field(default=None, description="Evaluate only these data sets; all when unset")
    max_samples: int | None = Field(
        default=None, ge=1, description="At most this many samples per data set (the first by sample_id); all when unset"
    )
    batch_size: int = Field(default=8, ge=1, description="Prompts generated together")
    max_new_tokens: int = Field(default=64, ge=1, description="Answer length limit for VQA questions")
    report_max_new_tokens: int = Field(default=256, ge=1, description="Answer length limit for generated reports")
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy decoding (the default); > 0 samples")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass when temperature > 0")
    seed: int = Field(default=0, description="Sampling seed (used when temperature > 0)")
    meteor: bool = Field(default=True, description="Score METEOR (runs pycocoevalcap's jar: needs Java)")
    examples: int = Field(default=10, ge=0, description="Example predictions shown side by side in the UI")


class TrainConfig(StageConfig):
    """Weighted DPO (method.md stage 6). Defaults are the paper's settings except the model:
    unset, a tiny random-weight LLaVA is built locally (demo and tests)."""

    model: Path | None = Field(default=None, description="Local LLaVA-family checkpoint folder; None builds the tiny demo model")
    ref_model: Path | None = Field(default=None, description="Separate frozen reference checkpoint; None = the policy with adapters disabled")
    tiny_seed: int = Field(default=0, description="Seed of the tiny demo model (used when model is None)")
    splits: list[str] = Field(default=["train"], description="Preference-set splits trained on")
    pair_types: list[Literal["text", "visual"]] = Field(default=["text", "visual"], description="Pair kinds trained on")
    beta: float = Field(default=0.1, description="DPO temperature")
    loss_type: list[str] = Field(default=["sigmoid"], description="TRL loss types (pairwise ones); sigmoid = the paper's")
    loss_weights: list[float] | None = Field(default=None, description="Mix of the loss types; None = all 1")
    anchor_coef: float = Field(default=0.0, description="Weight of mDPO's anchor term (0 = off)")
    anchor_margin: float = Field(default=0.0, description="Reward the anchor pushes the chosen side above")
    lora_r: int = Field(default=128, description="LoRA rank")
    lora_alpha: int = Field(default=256, description="LoRA alpha")
    lora_dropout: float = Field(default=0.05, description="LoRA dropout")
    lora_target: str = Field(
        default=r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)",
        description="Regex of the modules given adapters (the language model's linear layers)",
    )
    learning_rate: float = Field(default=1e-7, description="Peak learning rate")
    epochs: float = Field(default=3.0, description="Training epochs")
    max_steps: int = Field(default=-1, description="Stop after this many optimizer steps (-1 = by epochs)")
    batch_size: int = Field(default=1, description="Pairs per device per micro-batch")
    gradient_accumulation: int = Field(default=4, description="Micro-batches per optimizer step")
    warmup_ratio: float = Field(default=0.03, description="Share of steps spent warming up")
    scheduler: str = Field(default="cosine", description="Learning-rate schedule")
    max_length: int | None = Field(default=1024, description="Truncate prompt+answer to this many tokens")
    gradient_checkpointing: bool = Field(default=True, description="Trade compute for activation memory")
    save_steps: int = Field(default=200, description="Checkpoint every this many steps (for --resume)")
    logging_steps: int = Field(default=10, description="Log metrics every this many steps")
    seed: int = Field(default=0, description="Seed of adapters init, data order and dropout")
    accelerate_config: Path | None = Field(default=None, description="accelerate config (e.g. configs/accelerate/zero3.yaml) to launch multi-GPU")
    num_processes: int | None = Field(default=None, description="Processes for accelerate launch; None = the config's")


class RunConfig(StageConfig):
    """Everything one run needs; echoed into every stage's manifest (its own section)."""

    name: str = "mmedpo"
    store: Path = Field(default=Path("data/artifacts"), description="Artifact store root")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)


class ConfigError(ValueError):
    pass


def load_run_config(path: str | Path) -> RunConfig:
    """Read a run file; relative data paths are taken relative to the file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read run config: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a run config must be a mapping, got {type(raw).__name__}")
    try:
        config = RunConfig.model_validate(raw)
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{path}: invalid run config: {fields}") from exc
    return resolve_paths(config, path.parent)


def resolve_paths(config: RunConfig, base: Path) -> RunConfig:
    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else (base / p).resolve()

    sources = [s.model_copy(update={"root": absolute(s.root)}) for s in config.ingest.sources]
    model = config.evaluate.model
    return config.model_copy(
        update={
            "store": absolute(config.store),
            "ingest": config.ingest.model_copy(update={"sources": sources}),
            "evaluate": config.evaluate.model_copy(update={"model": absolute(model) if model else None}),
        }
    )
