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
        description="Base model: a local transformers checkpoint folder. Unset: the base model recorded in "
        "the evaluated adapter (its adapter_config.json), which must then be a local folder",
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


class RunConfig(StageConfig):
    """Everything one run needs; echoed into every stage's manifest (its own section)."""

    name: str = "mmedpo"
    store: Path = Field(default=Path("data/artifacts"), description="Artifact store root")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
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
