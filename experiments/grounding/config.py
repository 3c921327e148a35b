"""The grounding experiment's configuration: its data set, its measures, the experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from pydantic import Field, model_validator

from tasks.config import JudgeConfig, NormalizerConfig, ScoreConfig, SFTConfig, StageConfig, TrainConfig

SMOLLM2 = Path("data/models/smollm2-135m-instruct")


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
    findings: list[str] = Field(
        default=["lesion", "mass", "nodule", "cyst", "opacity"],
        min_length=1,
        description=(
            "Names a presence question gives the blob (drawn per question): the rules judge weighs a wrong answer "
            "by the finding's clinical class (lesion, mass, nodule: critical; cyst, opacity: finding), so the "
            "text pairs' weights have a spread"
        ),
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


ExperimentArm = Literal[
    "sft",
    "dpo_text",
    "mmedpo",
    "mmedpo_anchor",
    "mmedpo_global",
    "mmedpo_unweighted",
    "mmedpo_rounds",
]
ALL_ARMS: list[ExperimentArm] = list(get_args(ExperimentArm))
# Arms that change one thing of MMedPO and train at the rate MMedPO's sweep chose, so that the one
# thing is all that differs (the anchor changes the loss itself: it has a sweep of its own).
SAME_RATE = {"mmedpo_global": "mmedpo", "mmedpo_unweighted": "mmedpo", "mmedpo_rounds": "mmedpo"}


class MeasureConfig(StageConfig):
    """The grounding experiment's measures beyond the evaluate flow's (experiments/grounding/measure.py)."""

    split: str = Field(default="test", description="Split whose closed questions (and their twins) are measured")
    margins: bool = Field(default=True, description="Also measure the held-out pairs' log-probs and margins")
    inpaint_grow: int = Field(
        default=2, ge=0, description="Pixels the lesion box grows by before it is inpainted away (the soft edge)"
    )
    batch_size: int = Field(default=32, ge=1, description="Prompts scored or generated together")
    margin_split: str = Field(
        default="val", description="Split of the held-out pairs whose log-probs and margins are measured"
    )


class BackboneConfig(StageConfig):
    """One backbone the arms run on: its SFT start, its DPO settings, its seeds and sweep."""

    name: str = Field(description="Short name (report rows, run names)")
    label: str = Field(description="What it is, in the report")
    sft: SFTConfig
    train: TrainConfig
    seeds: list[int] = Field(min_length=1, description="Seeds of SFT (model init and data order) and DPO")
    arms: list[ExperimentArm] = Field(min_length=1, description="Arms run, in report order")
    learning_rates: list[float] = Field(
        min_length=1,
        description=(
            "DPO learning rates tried per trained arm on the first seed; each arm keeps the one with the best "
            "validation score (never the test split). The projector trains at the same rate"
        ),
    )
    anchor_coef: float = Field(default=1.0, gt=0, description="mmedpo_anchor: weight of mDPO's anchor term")

    @model_validator(mode="after")
    def _variants_need_mmedpo(self) -> BackboneConfig:
        for arm in self.arms:
            if arm in SAME_RATE and SAME_RATE[arm] not in self.arms:
                raise ValueError(f"backbone {self.name!r}: arm {arm} trains at {SAME_RATE[arm]}'s chosen rate: add it")
        return self


class RoundsConfig(StageConfig):
    """The "MMedPO, 2 rounds" arm: `mmedpo iterate` from the SFT checkpoint, half the steps a round."""

    rounds: int = Field(default=2, ge=2, description="Rounds; each trains epochs / rounds")
    num_samples: int = Field(default=4, ge=1, description="Answers the target model samples per question")
    temperature: float = Field(default=1.0, gt=0, description="Sampling temperature of the target model")
    max_new_tokens: int = Field(default=4, ge=1, description="Longest sampled answer, tokens")


def tiny_backbone() -> BackboneConfig:
    return BackboneConfig(
        name="tiny",
        label="tiny random-weight LLaVA (2-layer 64-wide Mistral LM, SigLIP tower)",
        sft=SFTConfig(epochs=6, learning_rate=1e-3, scheduler="constant", warmup_ratio=0.0, batch_size=16),
        train=scaled_train(epochs=3),
        seeds=[0, 1, 2, 3, 4],
        arms=list(ALL_ARMS),
        learning_rates=[2e-5, 1e-4, 5e-4],
    )


def smollm2_backbone(layers: int | None = 3) -> BackboneConfig:
    """``layers``: SmolLM2's first N decoder layers (None: all 30, the GPU run)."""
    depth = (
        f"its first {layers} of 30 layers (embeddings, layers 0-{layers - 1}, final norm, head)"
        if layers
        else ("all 30 layers")
    )
    return BackboneConfig(
        name=f"smollm2-{layers}l" if layers else "smollm2-30l",
        label=f"LLaVA on pretrained SmolLM2-135M-Instruct, {depth}",
        sft=SFTConfig(
            text_model=SMOLLM2,
            text_layers=layers,
            # 16 image tokens, lr 1e-3, 8 epochs: chosen on seed 0's val split among 4 and 16 tokens x (4 epochs
            # at 3e-4, 8 at 1e-3); with 4 tokens the model answered the training prior whatever the image.
            tiny_patch_size=8,
            epochs=8,
            learning_rate=1e-3,
            scheduler="constant",
            warmup_ratio=0.0,
            batch_size=16,
        ),
        train=scaled_train(epochs=1, max_steps=40),
        seeds=[0, 1, 2],
        arms=["sft", "dpo_text", "mmedpo", "mmedpo_anchor"],
        learning_rates=[1e-5, 1e-4, 5e-4],
    )


def judge_panel() -> ScoreConfig:
    """The text pairs' clinical-relevance panel: the rules judge (error type x the finding's clinical
    class: a mass above a cyst) and SmolLM2-135M-Instruct asked whether the mistake is serious
    (G-Eval, P(yes) from its logits, two example orders), scores averaged; the paper's normalizer.
    The model judges a missed and an invented finding differently, the rules judge the finding, so
    the weights spread where the rules alone give two values."""
    return ScoreConfig(
        judges=[
            JudgeConfig(name="rules"),
            JudgeConfig(name="smollm2-logits", kind="transformers", model_path=SMOLLM2, protocol="yesno", orders=2),
        ],
        mode="mean",
        # Stated, not defaulted: the experiment's recorded runs used the paper's fixed mapping.
        normalizer=NormalizerConfig(kind="paper"),
    )


def scaled_train(epochs: float, max_steps: int = -1) -> TrainConfig:
    """The paper's DPO settings (method.md stage 6) scaled to a small model on a CPU: sigmoid loss, beta
    0.1, LoRA alpha = 2 r with dropout 0.05, cosine schedule with 3% warmup; r 16 instead of 128,
    8 pairs a step instead of 4, no gradient checkpointing; the learning rate is swept."""
    return TrainConfig(
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        learning_rate=1e-4,
        projector_lr=1e-4,
        epochs=epochs,
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


class ExperimentConfig(StageConfig):
    """The grounding experiment: each arm's preference set trained on the same SFT checkpoints, per backbone."""

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
    data: GroundingDataConfig = Field(
        default_factory=lambda: GroundingDataConfig(
            n_train=400,
            n_val=128,
            n_test=320,
            image_size=32,
            question_mix=[0.6, 0.4, 0.0],
            contrast_min=0.8,
            contrast_max=1.0,
            radius_min=0.2,
            radius_max=0.3,
        )
    )
    score: ScoreConfig = Field(
        default_factory=judge_panel, description="How the text pairs are judged and pairs become weights (every arm)"
    )
    backbones: list[BackboneConfig] = Field(default_factory=lambda: [tiny_backbone(), smollm2_backbone()], min_length=1)
    rounds: RoundsConfig = Field(default_factory=RoundsConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
