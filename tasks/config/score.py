"""Stage score: the judge panel, its protocol, and how raw scores become DPO weights."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from models.settings import JudgeKind
from tasks.config.base import BY_CONTENT, OPERATIONAL, Device, Name, StageConfig, device_field
from tasks.config.endpoint import EndpointConfig

JudgeProtocol = Literal["auto", "json", "yesno"]


class JudgeConfig(StageConfig):
    """One member of the clinical-relevance panel.

    ``endpoint``: a model behind an OpenAI-compatible server (Med42 or BioMistral on vLLM or
    llama.cpp, GPT-4o), or a folder the run serves (``endpoint.serve``); ``transformers``: a
    local causal LM folder, run in-process; ``rules``: the offline scorer driven by the error
    type the hallucinate stage recorded (needs neither).

    Protocols (``protocol``): ``json`` asks for a 0-1 score with a reason in JSON and parses it
    (models/prompts/judge_first_*); ``yesno`` asks whether the mistake is serious after
    calibration examples and scores by the probability of "yes" over "yes" and "no" (G-Eval,
    models/token_judges.py): from the logits (transformers), the endpoint's logprobs
    (``capabilities.logprobs``), or parsed replies (greedy, or ``samples`` of them averaged).
    ``auto``: json for endpoints declaring structured output, yesno otherwise.
    """

    name: str = Field(
        default="rules", description="Label recorded with every round this judge plays; unique in the panel"
    )
    kind: JudgeKind = Field(default="rules", description="rules | endpoint | transformers")
    endpoint: EndpointConfig | None = Field(default=None, description="endpoint judges: the server and model name")
    model_path: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description="transformers judges: the local model folder (by content)",
    )
    protocol: JudgeProtocol = Field(
        default="auto", description="json | yesno | auto (json where the endpoint declares structured output)"
    )
    orders: int = Field(
        default=1, ge=1, description="yesno: orders of the calibration examples whose distributions are averaged"
    )
    samples: int = Field(
        default=1,
        ge=1,
        description="yesno endpoint judges without logprobs: sampled replies averaged (needs temperature > 0)",
    )
    dtype: Literal["float32", "bfloat16", "auto"] = Field(
        default="auto",
        description="transformers judges: the dtype the model is loaded in; auto = bf16 on a GPU, fp32 on the CPU",
    )
    device: Device = device_field("a transformers judge (json or yesno)")
    threads: int | None = Field(
        json_schema_extra=OPERATIONAL,
        default=1,
        ge=1,
        description="transformers yesno judges: torch threads while scoring (unset: torch's own setting)",
    )
    temperature: float = Field(default=0.0, ge=0.0, description="Sampling temperature; 0 keeps scores reproducible")
    max_tokens: int = Field(default=256, gt=0, description="Longest reply a judge may write (yesno: at most 3)")
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
        if self.samples > 1 and self.temperature <= 0:
            raise ValueError(f"judge {self.name!r}: samples > 1 needs temperature > 0 (else every reply is the same)")
        return self

    @property
    def resolved_protocol(self) -> str | None:
        """json or yesno (None for the rules judge)."""
        if self.kind == "rules":
            return None
        if self.protocol != "auto":
            return self.protocol
        structured = self.endpoint is not None and self.endpoint.capabilities.structured_output
        return "json" if self.kind == "endpoint" and structured else "yesno"


NormalizerKind = Literal["paper", "zscore", "none"]


class NormalizerConfig(StageConfig):
    """Raw clinical-relevance score -> DPO weight, computed per pair type (text / visual).

    ``zscore`` (default): z from the batch's own mean and std (the paper states z-normalization
    then clipping), ``weight = mid + (hi - lo) / 2 * clip(z, -span, span) / span``: weights spread
    over [lo, hi] whatever scale a judge's scores sit on. ``paper``: ``z = (s - mu) / sqrt(sigma2)``
    with the appendix's fixed mu = 1 and sigma^2 = 0.1, then ``weight = clip(anchor + gain * z, lo,
    hi)``: judges whose scores sit far below 1 all land on ``lo``. ``none``: the raw score (the
    released code's behaviour: a 0 score silently drops its pair).
    """

    kind: NormalizerKind = Field(default="zscore", description="zscore | paper | none")
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
    prompt_version: Name = Field(
        default="v1",
        description=(
            "Judge prompt templates models/prompts/judge_{first,followup,repair,yesno,examples}_<version>.txt"
        ),
    )
    concurrency: int = Field(
        json_schema_extra=OPERATIONAL,
        default=8,
        ge=1,
        description="Samples judged at once (endpoints add their own request limits)",
    )
    normalizer: NormalizerConfig = Field(default_factory=NormalizerConfig)
    visual_normalizer: NormalizerConfig | None = Field(
        default=None,
        description=(
            "Localizer confidence -> visual-pair weight; unset: the same mapping as text pairs (zscore: equal "
            "confidences, as annotated regions all have, give every visual pair the middle weight 1.0)"
        ),
    )

    @model_validator(mode="after")
    def _panel(self) -> ScoreConfig:
        names = [j.name for j in self.judges]
        if not names:
            raise ValueError("score: the judge panel is empty")
        if len(set(names)) != len(names):
            raise ValueError(f"score: judge names must be unique, got {names}")
        return self
