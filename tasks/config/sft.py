"""Stage sft: supervised fine-tuning before DPO (optional in a run)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tasks.config.base import BY_CONTENT, Device, StageConfig, device_field

SFTPart = Literal["vision_tower", "projector", "language_model"]


class SFTConfig(StageConfig):
    """Supervised fine-tuning (TRL's SFTTrainer) on a split's ground-truth answers: the
    starting point DPO training refines. Full-parameter training of the chosen parts, so it
    is meant for small models (the tiny LLaVA of the demo, or a small LM composed into one)."""

    model: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description=(
            "Local checkpoint of a supported family to start from (identified by content); None builds the tiny "
            "random-weight LLaVA"
        ),
    )
    text_model: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description=(
            "With model unset: a pretrained causal LM folder (Llama or Mistral architecture, identified by content) "
            "whose weights become the language model of a LLaVA with a new tiny_* vision tower and projector "
            "(models/compose.py); unset: the tiny random-weight LLaVA"
        ),
    )
    text_layers: int | None = Field(
        default=None,
        ge=1,
        description=(
            "text_model: keep only its first N decoder layers (embeddings, those layers, final norm and head, all "
            "pretrained); unset: every layer"
        ),
    )
    tiny_seed: int = Field(default=0, description="Seed of the tiny model's weights (model None)")
    tiny_image_size: int = Field(
        default=32, ge=8, description="Tiny model: vision tower input side, pixels (lesions must stay visible at it)"
    )
    tiny_patch_size: int = Field(
        default=8, ge=1, description="Tiny model: vision patch side (image tokens = (image_size / patch_size)^2)"
    )
    tiny_hidden_size: int = Field(default=64, ge=8, description="Tiny model: text decoder width")
    tiny_layers: int = Field(default=2, ge=1, description="Tiny model: text decoder layers")
    tiny_vision: Literal["clip", "siglip"] = Field(
        default="siglip",
        description="Tiny model: vision tower; an untrained CLIP tower barely sees intensity lesions (models/tiny/)",
    )
    trainable: list[SFTPart] = Field(
        default=["vision_tower", "projector", "language_model"],
        description=(
            "Parts trained (the rest frozen); a random-weight vision tower must be trained for the model to see "
            "anything"
        ),
    )
    splits: list[str] = Field(default=["train"], description="Sample splits trained on")
    learning_rate: float = Field(default=3e-3, gt=0, description="Peak learning rate")
    epochs: float = Field(default=3.0, gt=0, description="Training epochs")
    batch_size: int = Field(default=32, ge=1, description="Samples per optimizer step")
    warmup_ratio: float = Field(default=0.05, ge=0, lt=1, description="Share of steps spent warming up")
    scheduler: str = Field(default="cosine", description="Learning-rate schedule")
    max_length: int | None = Field(default=256, description="Truncate prompt+answer to this many tokens")
    gradient_checkpointing: bool = Field(
        default=True,
        description=(
            "Recompute activations in the backward pass (TRL's default): what lets a 7B VLM's SFT fit a GPU; "
            "a small model does not need it and pays ~8% more compute a step (bench/sft.py)"
        ),
    )
    seed: int = Field(default=0, description="Seed of data order and dropout")
    device: Device = device_field("SFT")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description="Weights' dtype: auto = bf16 on a GPU, fp32 on the CPU; trained modules keep fp32 master weights",
    )

    @model_validator(mode="after")
    def _one_start(self) -> SFTConfig:
        if self.model is not None and self.text_model is not None:
            raise ValueError("model and text_model: give one (a whole checkpoint, or a language model to compose)")
        if self.text_layers is not None and self.text_model is None:
            raise ValueError("text_layers: needs text_model")
        return self
