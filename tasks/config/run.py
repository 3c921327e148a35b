"""The run config (one YAML file per run) and the loader every command uses.

``load_config`` is the one way a config file becomes a model: a file that cannot be read or
validated raises ``ConfigError`` with the file's path and each failing field's dotted name,
and relative paths are taken relative to the file's folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from tasks.config.assemble import AssembleConfig
from tasks.config.base import ConfigError, Name, StageConfig
from tasks.config.checks import run_problems, warn_noise
from tasks.config.evaluate import EvaluateConfig
from tasks.config.hallucinate import HallucinateConfig
from tasks.config.ingest import IngestConfig, SourceConfig
from tasks.config.iterate import IterateConfig
from tasks.config.localize import LocalizeConfig
from tasks.config.noise import NoiseConfig
from tasks.config.runner import RunnerConfig
from tasks.config.score import ScoreConfig
from tasks.config.sft import SFTConfig
from tasks.config.train import TrainConfig

Config = TypeVar("Config", bound=StageConfig)


class RunConfig(StageConfig):
    """Everything one run needs; echoed into every stage's manifest (its own section)."""

    name: Name = Field(default="mmedpo", description="The preference set's name: <sets>/<name>/<version>/")
    model: Path | None = Field(
        default=None,
        description=(
            "The VLM the pairs are for (a local folder): fills localize.attention.model_path (box-less data sets "
            "get regions from its attention) and noise.model_path (noise in its normalization) where unset"
        ),
    )
    store: Path = Field(default=Path("data/artifacts"), description="Artifact store root")
    sets: Path = Field(
        default=Path("data/preference_sets"),
        description="Where preference sets are published (<sets>/<name>/<version>/)",
    )
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    localize: LocalizeConfig = Field(default_factory=LocalizeConfig)
    noise: NoiseConfig = Field(default_factory=NoiseConfig)
    hallucinate: HallucinateConfig = Field(default_factory=HallucinateConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    assemble: AssembleConfig = Field(default_factory=AssembleConfig)
    sft: SFTConfig | None = Field(
        default=None,
        description="Supervised fine-tuning before DPO: present, `pipeline` trains DPO from its checkpoint",
    )
    train: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    iterate: IterateConfig = Field(
        default_factory=IterateConfig,
        description="`mmedpo iterate`: rounds of curate -> train -> evaluate, each sampling the model just trained",
    )
    runner: RunnerConfig = Field(
        default_factory=RunnerConfig, description="Where per-sample shards run (threads, Dask, Ray)"
    )

    @model_validator(mode="before")
    @classmethod
    def _share_model(cls, raw: Any) -> Any:
        """The top-level model and each source's localize chain, copied into the stages that use them
        (before validation, so those stages validate - and key - the copies like their own fields)."""
        mappings = (dict, BaseModel, type(None))
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), mappings) for k in ("localize", "noise")):
            return raw  # validation proper names the malformed section
        raw = dict(raw)
        localize, noise = section(raw.get("localize")), section(raw.get("noise"))
        if raw.get("model") is not None:
            attention = section(localize.get("attention"))
            attention.setdefault("model_path", raw["model"])
            localize["attention"] = attention
            noise.setdefault("model_path", raw["model"])
        ingest = raw.get("ingest")
        sources = ingest.get("sources") if isinstance(ingest, dict) else None
        per_source = dict(localize.get("per_source") or {})
        for entry in sources if isinstance(sources, list) else []:
            entry = section(entry)
            if entry.get("localize") is not None:
                try:
                    name = SourceConfig.model_validate(entry).dataset
                except ValidationError:
                    continue  # validation proper names the bad field
                per_source.setdefault(name, entry["localize"])
        if per_source:
            localize["per_source"] = per_source
        raw["localize"], raw["noise"] = localize, noise
        return raw


def section(value: Any) -> dict[str, Any]:
    """A config section as a dict, whether given as one (a file) or as a model (code)."""
    if isinstance(value, BaseModel):
        return value.model_dump()
    return dict(value) if isinstance(value, dict) else {}


def load_run_config(path: str | Path) -> RunConfig:
    """A run file as a RunConfig, also checked as a whole (tasks.config.checks): everything
    knowable from the file fails here, before any stage runs."""
    config = load_config(path, RunConfig)
    problems = run_problems(config)
    if problems:
        raise ConfigError(f"{path}: {'; '.join(problems)}")
    warn_noise(config.noise, str(path))
    return config


def load_config(path: str | Path, model: type[Config]) -> Config:
    """Read a config file; relative paths in it are taken relative to the file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: cannot read config: not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise ConfigError(f"{path}: cannot read config: nested too deep") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read config: {' '.join(str(exc).split())}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a config file must be a mapping, got {type(raw).__name__}")
    return validate(raw, model, str(path), base=path.parent)


def validate(raw: Any, model: type[Config], origin: str, base: Path | None = None) -> Config:
    """``raw`` as a ``model``; ``origin`` names where it came from in the error."""
    try:
        config = model.model_validate(raw)
    except RecursionError:
        raise ConfigError(f"{origin}: nested too deep") from None
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {field_errors(exc)}") from exc
    return config if base is None else resolve_paths(config, base)


def field_errors(exc: ValidationError) -> str:
    """Every failing field as ``dotted.name: message``, on one line."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or '(top level)'}: {e['msg']}" for e in exc.errors())


def resolve_paths(config: Config, base: Path) -> Config:
    """Every Path field anywhere in the config tree, made absolute against ``base``.

    Generic on purpose: a stage that adds a path option gets it resolved without touching
    this function.
    """

    def resolve(value: Any) -> Any:
        if isinstance(value, Path):
            return value if value.is_absolute() else (base / value).resolve()
        if isinstance(value, StageConfig):
            return value.model_copy(update={name: resolve(getattr(value, name)) for name in type(value).model_fields})
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return value

    return resolve(config)


def changed_fields(config: BaseModel) -> dict[str, Any]:
    """The config as JSON, holding only what differs from the defaults (what a user edits)."""
    return config.model_dump(mode="json", exclude_defaults=True)
