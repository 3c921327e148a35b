"""Typed configuration: ``RunConfig`` and its loader (run.py), then one module per stage in
DAG order. Every model is importable from here."""

from tasks.config.assemble import AssembleConfig
from tasks.config.base import (
    BY_CONTENT,
    DATA_ROOT,
    OPERATIONAL,
    PLAIN_NAME,
    ConfigError,
    Name,
    StageConfig,
    identity,
    marker,
    plain_name,
)
from tasks.config.endpoint import LOCAL_HOSTS, EndpointCapabilities, EndpointConfig, ServeConfig
from tasks.config.evaluate import EvaluateConfig
from tasks.config.hallucinate import HallucinateConfig, TargetSamplingConfig
from tasks.config.ingest import IngestConfig, SourceConfig, SourceFormat
from tasks.config.iterate import IterateConfig
from tasks.config.localize import AnnotationConfig, HeatmapConfig, LocalizeConfig, SamArchitecture, SamConfig
from tasks.config.noise import NoiseConfig
from tasks.config.run import (
    RunConfig,
    changed_fields,
    field_errors,
    load_config,
    load_run_config,
    resolve_paths,
    validate,
)
from tasks.config.runner import RunnerConfig
from tasks.config.score import (
    JudgeConfig,
    JudgeKind,
    JudgeProtocol,
    NormalizerConfig,
    NormalizerKind,
    ScoreConfig,
    ScoreMode,
)
from tasks.config.sft import SFTConfig, SFTPart
from tasks.config.train import TrainConfig
from tasks.config.window import SampleWindow

__all__ = [
    "OPERATIONAL",
    "BY_CONTENT",
    "DATA_ROOT",
    "PLAIN_NAME",
    "plain_name",
    "Name",
    "marker",
    "ConfigError",
    "StageConfig",
    "identity",
    "RunConfig",
    "changed_fields",
    "field_errors",
    "load_config",
    "load_run_config",
    "resolve_paths",
    "validate",
    "IngestConfig",
    "SourceConfig",
    "SourceFormat",
    "AnnotationConfig",
    "HeatmapConfig",
    "LocalizeConfig",
    "SamArchitecture",
    "SamConfig",
    "NoiseConfig",
    "LOCAL_HOSTS",
    "EndpointConfig",
    "EndpointCapabilities",
    "ServeConfig",
    "HallucinateConfig",
    "TargetSamplingConfig",
    "JudgeConfig",
    "JudgeKind",
    "JudgeProtocol",
    "NormalizerConfig",
    "NormalizerKind",
    "ScoreConfig",
    "ScoreMode",
    "AssembleConfig",
    "SFTConfig",
    "SFTPart",
    "TrainConfig",
    "EvaluateConfig",
    "IterateConfig",
    "SampleWindow",
    "RunnerConfig",
]
