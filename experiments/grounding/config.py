"""The grounding experiment's configuration: its data set, its measures, the experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tasks.config import SFTConfig, StageConfig, TrainConfig


class GroundingDataConfig(StageConfig):
    """The grounding experiment's synthetic-lesion data set (experiments/grounding/data.py)."""

    seed: int = Field(default=0, description="Seed of crops, lesions and answers")
    n_train: int = Field(default=600, ge=1, description="Training samples (one question per image)")
    n_val: int = Field(
        default=96, ge=0, description="Held-out samples whose pairs measure log-prob margins (never trained on)"
    )
    n_test: int = Field(default=200, ge=1, description="Test samples (accuracy, image sensitivity)")
    image_size: int = Field(default=64, ge=16, description="Side of the written images, pixels")
    train_yes_rate: float = Field(
        default=0.75,
        ge=0,
        le=1,
        description="Share of 'yes' (and of left-half lesions) in the training split: the text prior",
    )
    test_yes_rate: float = Field(
        default=0.25, ge=0, le=1, description="The same share in the val and test splits (the flipped prior)"
    )
    question_mix: list[float] = Field(
        default=[0.5, 0.3, 0.2], description="Relative frequency of presence / side / where questions"
    )
    radius_min: float = Field(default=0.15, gt=0, description="Smallest lesion radius, as a fraction of the image side")
    radius_max: float = Field(default=0.25, gt=0, description="Largest lesion radius, as a fraction of the image side")
    contrast_min: float = Field(
        default=0.5, gt=0, le=1, description="Weakest lesion contrast, as a fraction of the grey range"
    )
    contrast_max: float = Field(default=0.8, gt=0, le=1, description="Strongest lesion contrast")
    bright_rate: float = Field(default=0.5, ge=0, le=1, description="Share of bright lesions (the rest are dark)")
    background_range: tuple[float, float] = Field(
        default=(64.0, 192.0),
        description="Grey levels (0-255) a background crop is stretched into; lesions reach beyond it",
    )

    @model_validator(mode="after")
    def _ranges(self) -> GroundingDataConfig:
        if len(self.question_mix) != 3 or min(self.question_mix) < 0 or sum(self.question_mix) <= 0:
            raise ValueError("question_mix: three non-negative weights (presence, side, where), not all zero")
        if self.radius_min > self.radius_max or self.contrast_min > self.contrast_max:
            raise ValueError("radius/contrast: min above max")
        return self


ExperimentArm = Literal["sft", "dpo_text", "mmedpo", "mmedpo_global", "mmedpo_unweighted"]


class MeasureConfig(StageConfig):
    """The grounding experiment's measures beyond accuracy (experiments/grounding/measure.py)."""

    noise_k: int = Field(
        default=500, ge=1, description="Diffusion step of the test-time lesion noise (image sensitivity)"
    )
    noise_seed: int = Field(default=0, description="Seed of the test-time noise (mixed with each sample id)")
    batch_size: int = Field(default=32, ge=1, description="Prompts generated together")
    margin_split: str = Field(
        default="val", description="Split of the held-out pairs whose chosen-rejected log-prob margins are measured"
    )


class ExperimentConfig(StageConfig):
    """The grounding experiment: each arm's preference set trained on the same SFT checkpoints."""

    name: str = Field(default="grounding", description="Run name (prefixes the arms' set names and flow runs)")
    store: Path = Field(
        default=Path("data/experiment/artifacts"),
        description="Artifact store root (shared stages are reused across arms)",
    )
    sets: Path = Field(
        default=Path("data/experiment/preference_sets"), description="Where the arms' preference sets are published"
    )
    data_root: Path = Field(
        default=Path("data/experiment/grounding"), description="Where the synthetic data set is written"
    )
    report: Path = Field(
        default=Path("bench/experiment.md"), description="Markdown report; the plot is written next to it (.png)"
    )
    seeds: list[int] = Field(
        default=[0, 1, 2], min_length=1, description="Seeds of SFT (model init and data order) and DPO"
    )
    arms: list[ExperimentArm] = Field(
        default=["sft", "dpo_text", "mmedpo", "mmedpo_global", "mmedpo_unweighted"],
        min_length=1,
        description="Arms run, in report order",
    )
    data: GroundingDataConfig = Field(
        default_factory=lambda: GroundingDataConfig(
            n_train=400,
            n_val=128,
            n_test=400,
            image_size=32,
            question_mix=[0.6, 0.4, 0.0],
            contrast_min=0.8,
            contrast_max=1.0,
            radius_min=0.2,
            radius_max=0.3,
        )
    )
    sft: SFTConfig = Field(
        default_factory=lambda: SFTConfig(
            epochs=6, learning_rate=1e-3, scheduler="constant", warmup_ratio=0.0, batch_size=16
        ),
        description=(
            "Stops while the model still answers part of the questions from the text prior, so preference training "
            "has room"
        ),
    )
    train: TrainConfig = Field(
        default_factory=lambda: TrainConfig(
            lora_r=16,
            lora_alpha=32,
            lora_dropout=0.0,
            learning_rate=1e-4,
            projector_lr=1e-4,
            epochs=2,
            batch_size=8,
            gradient_accumulation=1,
            warmup_ratio=0.0,
            scheduler="constant",
            max_length=None,
            gradient_checkpointing=False,
            save_steps=100_000,
            logging_steps=10,
        )
    )
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
