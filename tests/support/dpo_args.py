"""The DPO config of the exact-gradient checks: one plain SGD step at a constant rate, in fp32 on
the CPU (TRL's DPOConfig defaults to bf16 autocast, on the CPU too), nothing logged or saved."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from trl import DPOConfig

BETA = 0.1


def sgd_step_args(out: Path, batch_size: int = 4, accumulation: int = 1, **overrides: Any) -> DPOConfig:
    values: dict[str, Any] = dict(
        output_dir=str(out),
        beta=BETA,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=1e-2,
        optim="sgd",
        lr_scheduler_type="constant",
        remove_unused_columns=False,
        max_length=None,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
        dataloader_num_workers=0,
    )
    return DPOConfig(**(values | overrides))
