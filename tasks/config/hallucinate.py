"""Stage hallucinate: where the rejected side of a text pair comes from."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, model_validator

from tasks.config.base import BY_CONTENT, OPERATIONAL, Device, Name, StageConfig, device_field, max_pixels_field
from tasks.config.endpoint import EndpointConfig
from tasks.config.window import SampleWindow


class TargetSamplingConfig(StageConfig):
    """The target VLM sampled for candidate hallucinations (the paper's procedure)."""

    model_path: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description="Local checkpoint folder of a supported model family (models/families.py), identified by content",
    )
    adapter: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description=(
            "A saved peft (LoRA) adapter merged into model_path before sampling (identified by its content): the "
            "model a round of `mmedpo iterate` trained, so the next round's rejections are on-policy. With endpoint: "
            "the adapter the server serves under endpoint.model (set by iterate), naming it in keys and the cache"
        ),
    )
    selector: Literal["llm", "first"] = Field(
        default="llm",
        description=(
            "Who picks among the sampled answers that pass the length / same-answer guard: llm (the paper: the "
            "endpoint picks the most conflicting one, or none); first: the first of them, no LLM call"
        ),
    )
    fallback: Literal["llm", "rules", "skip"] = Field(
        default="llm",
        description=(
            "When no sampled answer is picked: llm (the paper: the endpoint rewrites the ground truth into an "
            "error); rules: the offline clinical perturbations; skip: the sample gets no text pair"
        ),
    )
    num_samples: int = Field(default=4, ge=1, description="Answers sampled per sample")
    temperature: float = Field(
        default=1.0, gt=0, description="Sampling temperature (must be > 0 to get distinct candidates)"
    )
    top_p: float = Field(default=0.95, gt=0, le=1, description="Nucleus sampling mass")
    max_new_tokens: int = Field(default=128, ge=1, description="Longest sampled answer, tokens")
    batch_size: int = Field(default=8, ge=1, description="Prompts per generate() call")
    seed: int = Field(default=0, description="Sampling seed")
    device: Device = device_field("the target model")
    max_pixels: int | None = max_pixels_field()
    endpoint: EndpointConfig | None = Field(
        default=None,
        description=(
            "Sample the target model through an OpenAI-compatible VLM server instead of in-process (vLLM: n answers "
            "per request, LoRA adapters by model name; docs/scale.md): the question with its image, num_samples "
            "answers at temperature and top_p. Needs capabilities.images and, for a non-local server, allow_images. "
            "model_path then stays unset: the server holds the model"
        ),
    )

    @property
    def uses_llm(self) -> bool:
        """Whether this backend calls the LLM endpoint at all (selector-free with a rules or skip
        fallback does not: on-policy rejections without an LLM)."""
        return self.selector == "llm" or self.fallback == "llm"


Backend = Literal["rules", "llm", "target"]


class HallucinateConfig(StageConfig):
    """Stage 1: a clinically plausible wrong answer (the rejected side of a text pair) per sample."""

    backend: Backend | list[Backend] = Field(
        default="rules",
        description=(
            "rules: offline clinical perturbations; llm: error injection by an LLM; target: sample the target VLM, an "
            "LLM selects or rewrites. A list is a fallback chain tried per sample in order ([llm, rules]: the rules "
            "for the samples the LLM gave no usable rejection); each row records the backend that produced it"
        ),
    )
    splits: list[str] | None = Field(
        default=["train"], description="Only samples of these splits get a rejection; all when unset"
    )
    min_length_ratio: float = Field(
        default=0.5, gt=0, description="Shortest rejection allowed, as a multiple of the ground truth's length"
    )
    max_length_ratio: float = Field(
        default=2.0,
        gt=0,
        description=(
            "Longest rejection allowed, as a multiple of the ground truth's length (the paper's data: ~6x, a length "
            "shortcut)"
        ),
    )
    length_floor_chars: int = Field(
        default=6,
        ge=1,
        description="Lengths under this count as this many characters, so 'CT' vs 'X-ray' is not a length violation",
    )
    max_attempts: int = Field(
        default=3, ge=1, description="LLM answers tried per sample before it is reported as failed"
    )
    seed: int = Field(
        default=0, description="Seeds the rules' choice among applicable perturbations (with the sample id)"
    )
    llm: EndpointConfig = Field(
        default_factory=EndpointConfig, description="Injection / selector endpoint (llm and target backends)"
    )
    temperature: float = Field(default=0.7, ge=0, description="Injection / selector sampling temperature")
    send_images: bool = Field(
        default=False,
        description="Send the image with the injection prompt (only to endpoints allowed to receive images)",
    )
    cache_dir: Path | None = Field(
        json_schema_extra=OPERATIONAL, default=None, description="LLM response cache; unset: <store>/llm-cache"
    )
    inject_prompt: Name = Field(
        default="hallucinate_inject_v1",
        description="Template in models/prompts/ for error injection / rewriting by JSON (structured-output endpoints)",
    )
    fewshot_prompt: Name = Field(
        default="hallucinate_fewshot_v1",
        description=(
            "Template in models/prompts/ for error injection by the few-shot plain-text protocol (endpoints without "
            "structured output): system message, then the turn each example and the sample fill"
        ),
    )
    fewshot_examples: Name = Field(
        default="hallucinate_examples_v1",
        description="Examples in models/prompts/ for the few-shot protocol, by answer kind (closed, open, report)",
    )
    select_prompt: Name = Field(
        default="hallucinate_select_v1", description="Template in models/prompts/ for choosing among sampled answers"
    )
    target: TargetSamplingConfig = Field(default_factory=TargetSamplingConfig)
    window: SampleWindow | None = Field(
        default=None,
        description="Only samples inside this window get a rejection (set per round by `mmedpo iterate`); unset: all",
    )

    @property
    def chain(self) -> tuple[str, ...]:
        """The backends in the order they are tried per sample."""
        return (self.backend,) if isinstance(self.backend, str) else tuple(self.backend)

    @property
    def uses_llm(self) -> bool:
        """Whether any backend of the chain calls the LLM endpoint (a selector-free target with a
        rules or skip fallback does not)."""
        return any(backend == "llm" or (backend == "target" and self.target.uses_llm) for backend in self.chain)

    @model_validator(mode="after")
    def _check(self) -> HallucinateConfig:
        if self.min_length_ratio >= self.max_length_ratio:
            raise ValueError("min_length_ratio must be below max_length_ratio")
        if not self.chain or len(set(self.chain)) != len(self.chain):
            raise ValueError(f"backend: a non-empty chain of distinct backends ({', '.join(get_args(Backend))})")
        if "target" in self.chain and (self.target.model_path is None) == (self.target.endpoint is None):
            raise ValueError("backend 'target' needs one of target.model_path and target.endpoint")
        endpoint = self.target.endpoint
        if endpoint is not None and not (endpoint.capabilities.images and endpoint.images_allowed):
            raise ValueError(
                "target.endpoint receives each question's image: set its capabilities.images (the model reads "
                "images) and, for a non-local server, allow_images"
            )
        if self.target.adapter is not None and self.target.model_path is None:
            raise ValueError("target.adapter needs target.model_path (the base model it was trained on)")
        if self.send_images and self.uses_llm and not self.llm.capabilities.images:
            raise ValueError("send_images: the endpoint does not read images (set llm.capabilities.images: true)")
        if self.send_images and self.uses_llm and self.llm.serve is None and not self.llm.images_allowed:
            # Known from the file alone: refused before ingest runs, not after three stages.
            raise ValueError(
                f"send_images: {self.llm.base_url} is not local and may not receive images "
                "(set llm.allow_images: true to allow it)"
            )
        return self
