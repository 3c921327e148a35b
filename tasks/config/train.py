"""Stage train: weighted DPO."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from tasks.config.base import BY_CONTENT, OPERATIONAL, ConfigError, Device, StageConfig, device_field, max_pixels_field


class TrainConfig(StageConfig):
    """Weighted DPO (method.md stage 6). Defaults are the paper's settings except the model:
    unset, a tiny random-weight LLaVA is built locally (demo and tests)."""

    model: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description=(
            "Local image-text-to-text checkpoint folder (identified by content); None builds the tiny demo model"
        ),
    )
    ref_model: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description="Separate frozen reference checkpoint (by content); None = the policy with adapters disabled",
    )
    init_adapter: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description=(
            "Continue training this saved LoRA adapter (by content) instead of a new one: its own r, alpha and "
            "dropout must match lora_*; the DPO reference stays the base model (adapters disabled)"
        ),
    )
    tiny_seed: int = Field(default=0, description="Seed of the tiny demo model (used when model is None)")
    splits: list[str] = Field(default=["train"], description="Preference-set splits trained on")
    pair_types: list[Literal["text", "visual"]] = Field(default=["text", "visual"], description="Pair kinds trained on")
    heldout: float = Field(
        default=0.0,
        ge=0.0,
        lt=1.0,
        description=(
            "Share of the samples whose pairs are held out of training (a sample's text and visual pairs together, "
            "picked by a hash of its question, answer and clean image, so every run holds out the same ones) and "
            "scored with TRL's DPO metrics before and after training (heldout.* counters)"
        ),
    )
    beta: float = Field(
        default=0.1, gt=0, description="DPO temperature (> 0: 0 makes the loss constant, < 0 trains toward rejections)"
    )
    loss_type: list[str] = Field(
        default=["sigmoid"], description="TRL loss types (pairwise ones); sigmoid = the paper's"
    )
    loss_weights: list[float] | None = Field(default=None, description="Mix of the loss types; None = all 1")
    anchor_coef: float = Field(default=0.0, description="Weight of mDPO's anchor term (0 = off)")
    anchor_margin: float = Field(default=0.0, description="Reward the anchor pushes the chosen side above")
    lora_r: int = Field(default=128, description="LoRA rank")
    lora_alpha: int = Field(default=256, description="LoRA alpha")
    lora_dropout: float = Field(default=0.05, description="LoRA dropout")
    lora_target: str | None = Field(
        default=None,
        description=(
            "Regex of the modules given adapters; None = the model family's language-model attention and MLP "
            "projections (models/families.py; never the vision tower)"
        ),
    )
    learning_rate: float = Field(default=1e-7, description="Peak learning rate of the LoRA adapters")
    projector_lr: float | None = Field(
        default=2e-5,
        description=(
            "Train the model family's vision-to-text projector fully at this learning rate (the paper: 2e-5); "
            "None keeps it frozen"
        ),
    )
    epochs: float = Field(default=3.0, description="Training epochs")
    max_steps: int = Field(default=-1, description="Stop after this many optimizer steps (-1 = by epochs)")
    batch_size: int = Field(default=1, ge=1, description="Pairs per device per micro-batch")
    global_batch_size: int = Field(
        default=4,
        ge=1,
        description=(
            "Pairs per optimizer step over all processes (the paper: 4); sets the gradient accumulation to "
            "global_batch_size / (processes x batch_size) unless gradient_accumulation is given"
        ),
    )
    gradient_accumulation: int | None = Field(
        default=None,
        ge=1,
        description="Micro-batches per optimizer step; unset: derived from global_batch_size (which it then overrides)",
    )
    warmup_ratio: float = Field(default=0.03, description="Share of steps spent warming up")
    scheduler: str = Field(default="cosine", description="Learning-rate schedule")
    max_length: int | None = Field(default=1024, description="Truncate prompt+answer to this many tokens")
    max_pixels: int | None = max_pixels_field()
    gradient_checkpointing: bool = Field(default=True, description="Trade compute for activation memory")
    save_steps: int = Field(default=200, description="Checkpoint every this many steps (for --resume)")
    keep_checkpoints: bool = Field(
        json_schema_extra=OPERATIONAL,
        default=False,
        description="Keep the checkpoints (optimizer state included) once the adapter is published; "
        "unset, they are removed then: only an unfinished run needs them",
    )
    logging_steps: int = Field(default=10, description="Log metrics every this many steps")
    seed: int = Field(default=0, description="Seed of adapters init, data order and dropout")
    accelerate_config: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description="accelerate config (e.g. models/accelerate/zero3.yaml) to launch multi-GPU; identified by "
        "its content (its process count sets the global batch)",
    )
    num_processes: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        default="auto",
        description=(
            "Data-parallel processes (DDP; accelerate launch, a free rendezvous port per run). auto: one per visible "
            "GPU, in this process on a one-GPU or CPU machine; None: accelerate_config's count"
        ),
    )
    device: Device = device_field("training")
    precision: Literal["auto", "bf16", "fp32"] = Field(
        default="auto",
        description=(
            "Weights' dtype: auto = bf16 on a GPU, fp32 on the CPU. Under bf16 the fully trained projector keeps "
            "fp32 master weights (models/precision.py)"
        ),
    )
    dataloader_workers: Annotated[int, Field(ge=0)] | Literal["auto"] = Field(
        json_schema_extra=OPERATIONAL,
        default="auto",
        description="Processes decoding images for the trainer; auto: 4 on a GPU, 0 (in the training loop) on the CPU",
    )

    def accumulation_steps(self, processes: int) -> int:
        """Micro-batches per optimizer step on ``processes`` data-parallel processes: the given
        gradient_accumulation, else what makes the step global_batch_size pairs."""
        if self.gradient_accumulation is not None:
            return self.gradient_accumulation
        per_micro_batch = processes * self.batch_size
        if self.global_batch_size % per_micro_batch:
            raise ConfigError(
                f"train.global_batch_size {self.global_batch_size} is not a multiple of {processes} processes x "
                f"batch_size {self.batch_size}: change one of them or set train.gradient_accumulation"
            )
        return self.global_batch_size // per_micro_batch

    def accelerate_shape(self) -> tuple[int, int]:
        """(machines, processes) the accelerate config declares; (1, 1) without one."""
        if self.accelerate_config is None:
            return 1, 1
        import yaml

        try:
            declared = yaml.safe_load(Path(self.accelerate_config).read_text()) or {}
            return int(declared.get("num_machines", 1)), int(declared.get("num_processes", 1))
        except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError) as exc:
            raise ConfigError(
                f"train.accelerate_config: {self.accelerate_config}: not a readable accelerate config ({exc})"
            ) from exc
