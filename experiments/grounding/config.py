"""The grounding experiment's configuration: its data set, its arms' backbone, the statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, model_validator

from tasks.config import NormalizerConfig, ScoreConfig, SFTConfig, StageConfig, TrainConfig

SMOLLM2 = Path("data/models/smollm2-135m-instruct")


class GroundingDataConfig(StageConfig):
    """The synthetic lesion-and-distractor data set (experiments/grounding/data.py)."""

    seed: int = Field(default=0, description="Seed of crops, lesions, distractors and sides")
    n_train: int = Field(
        default=160, ge=1, description="Training images of the preference pairs (each asked both questions)"
    )
    n_sft: int = Field(
        default=2500,
        ge=1,
        description="The SFT's own images (sft.jsonl; both questions, lesions left at sft_left_rate, no twins)",
    )
    n_val: int = Field(default=64, ge=1, description="Validation images (the learning-rate choice), with their twins")
    n_test: int = Field(default=160, ge=1, description="Test images, with their twins")
    image_size: int = Field(default=32, ge=16, description="Side of the written images, pixels")
    train_left_rate: float = Field(
        default=0.75, ge=0, le=1, description="Share of training lesions in the left half: the text prior"
    )
    test_left_rate: float = Field(
        default=0.25, ge=0, le=1, description="The same share in the val and test splits (the prior flipped)"
    )
    sft_left_rate: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description=(
            "The same share in the SFT's own images: no side prior, so the SFT (the model's pretraining) can only "
            "answer from the image; the prior the design tests against is the preference pairs' (train_left_rate)"
        ),
    )
    radius_min: float = Field(default=0.15, gt=0, description="Smallest lesion radius, as a fraction of the side")
    radius_max: float = Field(default=0.2, gt=0, le=0.21, description="Largest lesion radius (a disc fits its half)")
    contrast_min: float = Field(
        default=0.4, gt=0, le=1, description="Weakest lesion (and distractor) contrast, as a fraction of the grey range"
    )
    contrast_max: float = Field(default=0.6, gt=0, le=1, description="Strongest contrast")
    distractor_aspect: float = Field(
        default=3.0, ge=1.5, description="Axis ratio of the distractor ellipse (its area is the lesion's)"
    )
    background_range: tuple[int, int] = Field(
        default=(40, 215),
        description=(
            "Grey levels (0-255) a background crop is stretched to span exactly; lesion and distractor pixels are kept "
            "inside it, so no intensity outside the background's own range tells where (or whether) they are"
        ),
    )

    @model_validator(mode="after")
    def _ranges(self) -> GroundingDataConfig:
        if self.radius_min > self.radius_max or self.contrast_min > self.contrast_max:
            raise ValueError("radius/contrast: min above max")
        low, high = self.background_range
        if not 0 <= low < high <= 255:
            raise ValueError(f"background_range: 0 <= low < high <= 255, got {self.background_range}")
        return self


Arm = Literal["sft", "text", "local", "sham", "global"]
ARMS: list[Arm] = list(get_args(Arm))
# The pre-registered contrasts (arm minus arm, seed by seed), in the order Holm's correction reports them.
CONTRASTS: list[tuple[Arm, Arm]] = [("local", "sham"), ("local", "text"), ("local", "global")]
# The arms whose mean validation score chooses the one learning rate every arm trains at.
TUNED_BY: tuple[Arm, Arm] = ("text", "local")


class MeasureConfig(StageConfig):
    """The grounding experiment's measures on one model and split (experiments/grounding/measure.py)."""

    split: str = Field(default="test", description="Split measured: its originals and their twins")
    batch_size: int = Field(default=32, ge=1, description="Prompts scored or generated together")


class PretrainConfig(StageConfig):
    """The tower's pretraining without the language model (experiments/grounding/pretrain.py)."""

    views: int = Field(default=30000, ge=1001, description="Fresh views drawn for it (1000 held out for its metrics)")
    steps: int = Field(default=3000, ge=1, description="Optimizer steps")
    batch_size: int = Field(default=64, ge=1, description="Views a step")
    learning_rate: float = Field(default=3e-3, gt=0, description="AdamW's rate, constant")


class BackboneConfig(StageConfig):
    """The backbone every arm runs on: its SFT start, its DPO settings, its seeds and learning rates."""

    name: str = Field(description="Short name (run names, the results file)")
    label: str = Field(description="What it is, in the report")
    sft: SFTConfig
    pretrain: PretrainConfig | None = Field(
        default=None,
        description="Pretrain the composed model's new tower before the SFT; None: the SFT starts at random",
    )
    train: TrainConfig = Field(description="DPO settings of every arm (its learning rate is chosen, see below)")
    tuning_seed: int = Field(description="Seed whose validation split chooses the learning rate; never a test seed")
    seeds: list[int] = Field(min_length=2, description="Test seeds (SFT init and data order, DPO), paired across arms")
    learning_rates: list[float] = Field(
        min_length=1,
        description="Rates tried on the tuning seed; the one with the best mean validation score of A1 and A2 is kept",
    )

    @model_validator(mode="after")
    def _tuning_seed_apart(self) -> BackboneConfig:
        if self.tuning_seed in self.seeds:
            raise ValueError(f"backbone {self.name!r}: tuning_seed {self.tuning_seed} is also a test seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"backbone {self.name!r}: seeds repeat: {self.seeds}")
        return self


def fixed_train(max_steps: int) -> TrainConfig:
    """The paper's DPO settings (method.md stage 6) scaled to a small model on a CPU: sigmoid loss, beta
    0.1, LoRA alpha = 2 r with dropout 0.05, cosine with 3% warmup; r 16, 8 pairs a step. Every arm runs
    ``max_steps`` steps, so a set with fewer pairs (text only) is repeated, not trained less."""
    return TrainConfig(
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        learning_rate=1e-4,
        projector_lr=1e-4,
        epochs=100.0,  # never reached: max_steps ends every arm
        max_steps=max_steps,
        batch_size=8,
        gradient_accumulation=1,
        warmup_ratio=0.03,
        scheduler="cosine",
        max_length=None,
        gradient_checkpointing=False,
        save_steps=100_000,
        logging_steps=10,
    )


def smollm2_backbone(layers: int | None = 3) -> BackboneConfig:
    """The experiment's backbone: a LLaVA whose language model is pretrained SmolLM2-135M-Instruct
    (``layers``: its first N decoder layers; None: all 30, for a GPU), a SigLIP tower of 16 image tokens
    (the 32 px images seen at 16 px in 4 px patches). Its tower is first pretrained alone on fresh views, then
    its SFT: one pass over the SFT's own images, the tower and projector trained, the language model frozen
    (experiments/grounding/README.md says why)."""
    depth = f"its first {layers} of 30 layers" if layers else "all 30 layers"
    return BackboneConfig(
        name=f"smollm2-{layers}l" if layers else "smollm2-30l",
        label=(
            f"LLaVA on pretrained SmolLM2-135M-Instruct, {depth}, SigLIP tower with 16 image tokens "
            "(16 px, 4 px patches)"
        ),
        sft=SFTConfig(
            text_model=SMOLLM2,
            text_layers=layers,
            tiny_image_size=16,
            tiny_patch_size=4,
            trainable=["vision_tower", "projector"],
            gradient_checkpointing=False,
            epochs=1,
            learning_rate=1e-3,
            scheduler="constant",
            warmup_ratio=0.0,
            batch_size=8,
        ),
        pretrain=PretrainConfig(),
        train=fixed_train(max_steps=40),
        tuning_seed=100,
        seeds=[0, 1, 2, 3, 4, 5],
        learning_rates=[1e-4, 5e-4],
    )


def tiny_backbone() -> BackboneConfig:
    """The fast smoke setting: the random-weight tiny LLaVA, two test seeds."""
    return BackboneConfig(
        name="tiny",
        label="tiny random-weight LLaVA (2-layer 64-wide Mistral LM, SigLIP tower), smoke setting",
        sft=SFTConfig(
            epochs=4,
            learning_rate=1e-3,
            scheduler="constant",
            warmup_ratio=0.0,
            batch_size=16,
            gradient_checkpointing=False,
        ),
        train=fixed_train(max_steps=10),
        tuning_seed=100,
        seeds=[0, 1],
        learning_rates=[1e-4],
    )


def unit_weights() -> ScoreConfig:
    """The rules judge for the text pairs' scores, and every pair - text and visual - at weight 1: the arms
    differ in which pairs they train on, never in how much a pair counts."""
    flat = NormalizerConfig(kind="paper", anchor=1.0, gain=0.0)
    return ScoreConfig(normalizer=flat, visual_normalizer=flat)


class ExperimentConfig(StageConfig):
    """The grounding experiment: five arms from the same SFT checkpoint per seed, one learning rate."""

    name: str = Field(default="grounding", description="Run name (prefixes the arms' set names and flow runs)")
    store: Path = Field(default=Path("data/experiment/artifacts"), description="Artifact store root")
    sets: Path = Field(
        default=Path("data/experiment/preference_sets"), description="Where the arms' preference sets are published"
    )
    data_root: Path = Field(
        default=Path("data/experiment/grounding"), description="Where the synthetic data set is written"
    )
    report: Path = Field(default=Path("bench/experiment.md"), description="The Markdown report")
    results: Path = Field(
        default=Path("experiments/grounding/results/smollm2-3l.json"),
        description="Per-seed raw results (committed): the report is regenerated from them by --report-only",
    )
    data: GroundingDataConfig = Field(default_factory=GroundingDataConfig)
    score: ScoreConfig = Field(default_factory=unit_weights)
    backbone: BackboneConfig = Field(default_factory=smollm2_backbone)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    goal_points: float = Field(
        default=8.0, description="Stated before running: A2 - A3 on the relocation twin, points, adjusted interval > 0"
    )
    pilot_stop_points: float = Field(
        default=3.0,
        ge=0,
        description="The pilot (tuning seed) stops the run when |A2 - A3| on its validation twins is below this",
    )
    pilot_only: bool = Field(default=False, description="Run the tuning seed only (the pilot), then report")
    threads: int = Field(
        default=1,
        ge=1,
        description="torch intra-op threads of the run; 1 is fastest on cores other jobs share (bench/sft.py)",
    )
    workers: int = Field(
        default=2,
        ge=1,
        description=(
            "Processes running the pilot and the test seeds at once, each with `threads` torch threads: one per core"
        ),
    )


def smoke(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` at smoke size: the tiny backbone, a small data set, its own store, results and report."""
    root = config.store.parent / "smoke"
    return config.model_copy(
        update={
            "backbone": tiny_backbone(),
            "data": config.data.model_copy(update={"n_train": 64, "n_val": 16, "n_test": 32, "n_sft": 64}),
            "store": root / "artifacts",
            "sets": root / "preference_sets",
            "data_root": root / "grounding",
            "report": root / "experiment.md",
            "results": root / "results.json",
            "pilot_stop_points": 0.0,
        }
    )
