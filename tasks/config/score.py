"""Stage score: the judge panel, its protocol, and how raw scores become DPO weights."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.config.base import BY_CONTENT, OPERATIONAL, StageConfig
from tasks.config.endpoint import EndpointConfig

JudgeKind = Literal["rules", "endpoint", "transformers"]


class JudgeConfig(StageConfig):
    """One member of the clinical-relevance panel.

    ``endpoint``: a model behind an OpenAI-compatible server (Med42 or BioMistral on vLLM or
    llama.cpp, GPT-4o); ``transformers``: a local causal LM folder; ``rules``: the offline
    scorer driven by the error type the hallucinate stage recorded (needs neither).
    """

    name: str = Field(
        default="rules", description="Label recorded with every round this judge plays; unique in the panel"
    )
    kind: JudgeKind = Field(default="rules", description="rules | endpoint | transformers")
    endpoint: EndpointConfig | None = Field(default=None, description="endpoint judges: the server and model name")
    model_path: str | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description="transformers judges: the local model folder (by content)",
    )
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature; 0 keeps scores reproducible")
    max_tokens: int = Field(default=256, gt=0, description="Longest reply a judge may write")
    parse_retries: int = Field(
        default=2,
        ge=0,
        description="Re-asks after a reply without a usable score before the judge is excluded for that sample",
    )

    @model_validator(mode="after")
    def _needs(self) -> JudgeConfig:
        if self.kind == "endpoint" and self.endpoint is None:
            raise ValueError(f"judge {self.name!r}: an endpoint judge needs endpoint (base_url, model)")
        if self.kind == "transformers" and not self.model_path:
            raise ValueError(f"judge {self.name!r}: a transformers judge needs model_path (a local folder)")
        return self


NormalizerKind = Literal["paper", "zscore", "none"]


class NormalizerConfig(StageConfig):
    """Raw clinical-relevance score -> DPO weight, computed per pair type (text / visual).

    ``paper``: ``z = (s - mu) / sqrt(sigma2)`` with the paper's fixed mu and sigma^2, then
    ``weight = clip(anchor + gain * z, lo, hi)``; ``zscore``: z from the batch's own mean and
    std, ``weight = mid + (hi - lo) / 2 * clip(z, -span, span) / span``; ``none``: the raw score
    (the released code's behaviour: a 0 score silently drops its pair).
    """

    kind: NormalizerKind = Field(default="paper", description="paper | zscore | none")
    mu: float = Field(default=1.0, description="paper: centre of the z-score (appendix: mu = 1)")
    sigma2: float = Field(default=0.1, gt=0.0, description="paper: variance of the z-score (appendix: sigma^2 = 0.1)")
    anchor: float = Field(default=1.25, description="paper: weight of a score equal to mu (a fully relevant error)")
    gain: float = Field(default=0.25, description="paper: weight change per standard deviation of score")
    span: float = Field(default=2.0, gt=0.0, description="zscore: |z| that reaches lo / hi (larger |z| is clipped)")
    lo: float = Field(default=0.75, description="Smallest weight (paper: 0.75)")
    hi: float = Field(default=1.25, description="Largest weight (paper: 1.25)")

    @model_validator(mode="after")
    def _range(self) -> NormalizerConfig:
        if self.lo > self.hi:
            raise ValueError(f"normalizer: lo {self.lo} > hi {self.hi}")
        return self


ScoreMode = Literal["debate", "mean"]


class ScoreConfig(StageConfig):
    """Clinical-relevance scoring of text pairs by a judge panel, visual pairs by localizer confidence."""

    judges: list[JudgeConfig] = Field(
        default_factory=lambda: [JudgeConfig()], description="The panel, in speaking order"
    )
    mode: ScoreMode = Field(
        default="debate", description="debate: sequential adopt-or-rescore; mean: independent scores averaged"
    )
    max_rounds: int = Field(
        default=5, ge=1, description="debate: most scored rounds before falling back to the mean of the score history"
    )
    agreement_tolerance: float = Field(
        default=0.0,
        ge=0.0,
        le=1.0,
        description="debate: a re-score this close to the previous score counts as adopting it",
    )
    prompt_version: str = Field(
        default="v1", description="Judge prompt templates models/prompts/judge_{first,followup}_<version>.txt"
    )
    concurrency: int = Field(
        json_schema_extra=OPERATIONAL,
        default=8,
        ge=1,
        description="Samples judged at once (endpoints add their own request limits)",
    )
    normalizer: NormalizerConfig = Field(default_factory=NormalizerConfig)

    @model_validator(mode="after")
    def _panel(self) -> ScoreConfig:
        names = [j.name for j in self.judges]
        if not names:
            raise ValueError("score: the judge panel is empty")
        if len(set(names)) != len(names):
            raise ValueError(f"score: judge names must be unique, got {names}")
        return self
