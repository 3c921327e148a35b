"""Stage evaluate: which samples, which model, how answers are generated."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from tasks.config.base import BY_CONTENT, Device, StageConfig, device_field, max_pixels_field


class EvaluateConfig(StageConfig):
    """Answer a test split with the base model (and a trained adapter) and score it."""

    model: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description="Base model: a local transformers checkpoint folder, identified by its content. Unset: the "
        "evaluated train artifact's base model (a checkpoint shipped inside it, else the local path it records)",
    )
    splits: list[str] = Field(default=["test"], description="Sample splits evaluated")
    datasets: list[str] | None = Field(default=None, description="Evaluate only these data sets; all when unset")
    max_samples: int | None = Field(
        default=None,
        ge=1,
        description="At most this many samples per data set (the first by sample_id); all when unset",
    )
    batch_size: int = Field(default=8, ge=1, description="Prompts generated together")
    max_new_tokens: int = Field(default=64, ge=1, description="Answer length limit for VQA questions")
    report_max_new_tokens: int = Field(default=256, ge=1, description="Answer length limit for generated reports")
    temperature: float = Field(default=0.0, ge=0.0, description="0 = greedy decoding (the default); > 0 samples")
    top_p: float = Field(default=1.0, gt=0.0, le=1.0, description="Nucleus sampling mass when temperature > 0")
    seed: int = Field(default=0, description="Sampling seed (used when temperature > 0)")
    meteor: bool = Field(default=True, description="Score METEOR (runs pycocoevalcap's jar: needs Java)")
    device: Device = device_field("the evaluated model")
    max_pixels: int | None = max_pixels_field()
    examples: int = Field(default=10, ge=0, description="Example predictions shown side by side in the UI")
