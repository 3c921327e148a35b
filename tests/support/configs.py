"""Run settings small enough for a test on two CPU cores."""

from __future__ import annotations

from tasks.config import TrainConfig


def small_train(**overrides) -> TrainConfig:
    """A LoRA run of rank 4 for a couple of steps (no warm-up tricks, no activation checkpointing)."""
    values = dict(
        lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=1e-3, max_steps=2, batch_size=2,
        gradient_accumulation=1, save_steps=100, logging_steps=1, max_length=None, gradient_checkpointing=False,
    )  # fmt: skip
    return TrainConfig(**{**values, **overrides})
