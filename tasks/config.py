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


class AssembleConfig(StageConfig):
    """Which pairs make the preference set, and what counts as test-split leakage."""

    text_pairs: bool = Field(default=True, description="Build text pairs (ground truth vs hallucination); off = the paper's visual-only ablation")
    visual_pairs: bool = Field(default=True, description="Build visual pairs (original vs lesion-noised image); off = text-only ablation")
    test_splits: list[str] = Field(default=["test"], description="Splits held out: no pairs from them, and pairs leaking into them are dropped")
    check_near_duplicates: bool = Field(default=True, description="Also drop pairs whose image is a re-encoded/resized copy of a test image (perceptual hash)")


class RunConfig(StageConfig):
    """Everything one run needs; echoed into every stage's manifest (its own section)."""

    name: str = "mmedpo"
    store: Path = Field(default=Path("data/artifacts"), description="Artifact store root")
    sets: Path = Field(default=Path("data/preference_sets"), description="Where preference sets are published (<sets>/<name>/<version>/)")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    assemble: AssembleConfig = Field(default_factory=AssembleConfig)


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
    return config.model_copy(
        update={"store": absolute(config.store), "sets": absolute(config.sets), "ingest": config.ingest.model_copy(update={"sources": sources})}
    )
