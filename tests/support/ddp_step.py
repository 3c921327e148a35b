"""One optimizer step of WeightedDPOTrainer through Trainer.train(), in one process or in each rank of
``accelerate launch`` (tests/models/test_ddp.py): the step's logged loss, the LoRA gradients the
optimizer sees (after DDP's all-reduce, before any clipping) and the pairs each rank held.

    accelerate launch --config_file models/accelerate/cpu-ddp.yaml -m tests.support.ddp_step CASES.json RESULT.pt
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import TrainerCallback

from models import ddp, vlm
from models.dpo import ImagePairCollator, WeightedDPOTrainer, preference_example
from models.lifetime import die_with_parent
from tests.support.dpo_args import sgd_step_args


class Recorder(TrainerCallback):
    """The gradients the optimizer is about to apply, and the pairs this rank held per step."""

    def __init__(self) -> None:
        self.trainer: WeightedDPOTrainer | None = None
        self.grads: dict[str, torch.Tensor] = {}
        self.held: list[int] = []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads = {
            name: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p)
            for name, p in self.trainer.model.named_parameters()
            if p.requires_grad
        }


def one_step(tiny: Path, rows: list[dict[str, Any]], out: Path, batch_size: int, accumulation: int) -> dict[str, Any]:
    """Train one step over ``rows``; on the main process, what it did (others: None)."""
    loaded = vlm.load(tiny, device="cpu")
    # The raw gradient, not a clipped one.
    args = sgd_step_args(out, batch_size, accumulation, max_grad_norm=0.0, disable_tqdm=True)
    examples = [
        preference_example(
            r["prompt"], r["chosen"], r["rejected"], r["chosen_image"], r["rejected_image"], r["weight"], r["pair_type"]
        )
        for r in rows
    ]
    torch.manual_seed(0)  # the same random adapters in every process
    recorder = Recorder()
    trainer = WeightedDPOTrainer(
        model=loaded.model,
        args=args,
        train_dataset=Dataset.from_list(examples),
        processing_class=loaded.processor,
        peft_config=LoraConfig(
            r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], init_lora_weights=False
        ),
        data_collator=ImagePairCollator(loaded.processor),
        callbacks=[recorder],
    )
    recorder.trainer = trainer
    batch_samples = trainer.get_batch_samples

    def spy(iterator, num_batches, device):
        batches, items = batch_samples(iterator, num_batches, device)
        recorder.held.append(sum(int(b[ddp.COUNTED].sum()) if ddp.COUNTED in b else len(b["weight"]) for b in batches))
        return batches, items

    trainer.get_batch_samples = spy
    trainer.train()
    accelerator = trainer.accelerator
    held = accelerator.gather(torch.tensor(recorder.held)[None]).tolist()
    result = {
        "loss": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
        "grads": recorder.grads,
        "held": held,  # per rank, per step: pairs of the set (fillers left out)
        "world": accelerator.num_processes,
        "backend": str(accelerator.state.backend),
        "steps": trainer.state.global_step,
    }
    accelerator.wait_for_everyone()
    return result if accelerator.is_main_process else None


def main() -> None:
    die_with_parent(signal.SIGKILL)  # a rank never outlives its launcher
    cases, result_path = json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2])
    results = [one_step(Path(c["tiny"]), c["rows"], Path(c["out"]), c["batch_size"], c["accumulation"]) for c in cases]
    if results[0] is not None:
        torch.save(results, result_path)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
