"""Training progress a person can follow: one bar, one summary line per epoch.

transformers' own callbacks print a dict per logging step (PrinterCallback) or write them
under the bar (ProgressCallback); ``quiet_progress`` swaps both for ``EpochProgress``.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm.auto import tqdm
from transformers import Trainer, TrainerCallback
from transformers.trainer_callback import PrinterCallback, ProgressCallback

# Shown in the per-epoch line when the trainer logged them (DPO: per pair type too).
SUMMARY_KEYS = ("loss", "text/rewards/margins", "visual/rewards/margins", "rewards/accuracies", "learning_rate")


def quiet_progress(trainer: Trainer, label: str) -> Trainer:
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(EpochProgress(label))
    return trainer


class EpochProgress(TrainerCallback):
    """A bar over the optimizer steps (main process only) and a line per finished epoch."""

    def __init__(self, label: str):
        self.label = label
        self.bar: Any = None
        self.logs: dict[str, list[float]] = {}
        self.epoch_started = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc=self.label,
                unit="step",
                file=sys.stderr,
                leave=False,
            )
        self.epoch_started = time.perf_counter()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        for key, value in (logs or {}).items():
            if isinstance(value, (int, float)):
                self.logs.setdefault(key, []).append(float(value))
        if self.bar is not None and "loss" in (logs or {}):
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}")

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            shown = [f"{key} {sum(values) / len(values):.4g}" for key in SUMMARY_KEYS if (values := self.logs.get(key))]
            seconds = time.perf_counter() - self.epoch_started
            where = f"epoch {state.epoch:.2f}/{args.num_train_epochs:g}, step {state.global_step}/{state.max_steps}"
            message = f"{self.label}: {where}: {', '.join(shown) or 'no metrics logged'} ({seconds:.1f} s)"
            (self.bar.write if self.bar is not None else print)(message)
        self.logs = {}
        self.epoch_started = time.perf_counter()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
