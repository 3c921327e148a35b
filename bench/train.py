"""Step time and peak memory: WeightedDPOTrainer vs TRL's plain DPOTrainer, same model and batch.

Each variant trains in its own subprocess (peak memory is per process), alternating, on
a tiny LLaVA built with models/tiny.py (wider than the test one so the step is not all
overhead). Step time = median over the timed steps after warm-up. Peak memory = CUDA
max_memory_allocated on GPU, else the process's max RSS.

    python bench/train.py [--steps 12] [--repeats 2] [--hidden 256] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def run_one(variant: str, steps: int, hidden: int, batch: int, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from models import vlm
    from models.dpo import ImagePairCollator, WeightedDPOTrainer, preference_example
    from models.tiny import build_tiny_llava
    from tests.support.preference import preference_rows

    model_dir = build_tiny_llava(workdir / "model", seed=0, hidden_size=hidden, layers=4, image_size=64)
    rows = preference_rows(workdir / "img", [1.25, 0.8, 1.0, 0.9, 1.1, 0.75, 1.2, 0.95])
    loaded = vlm.load(model_dir, move=False)
    if variant == "weighted":
        data = [
            preference_example(
                r["prompt"],
                r["chosen"],
                r["rejected"],
                r["chosen_image"],
                r["rejected_image"],
                r["weight"],
                r["pair_type"],
            )
            for r in rows
        ]
        trainer_class, extra = WeightedDPOTrainer, {"data_collator": ImagePairCollator(loaded.processor)}
    else:
        data = [
            {
                "prompt": [{"role": "user", "content": r["prompt"]}],
                "chosen": [{"role": "assistant", "content": r["chosen"]}],
                "rejected": [{"role": "assistant", "content": r["rejected"]}],
                "image": vlm.open_image(r["chosen_image"]),
            }
            for r in rows
        ]
        trainer_class, extra = DPOTrainer, {}
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    on_gpu = torch.cuda.is_available()
    args = DPOConfig(
        output_dir=str(workdir / "out"),
        per_device_train_batch_size=batch,
        max_steps=steps,
        learning_rate=1e-4,
        remove_unused_columns=False,
        max_length=None,
        report_to=[],
        save_strategy="no",
        logging_steps=10_000,
        use_cpu=not on_gpu,
        bf16=on_gpu,
        seed=0,
        disable_tqdm=True,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
    )
    trainer = trainer_class(
        model=loaded.model,
        args=args,
        train_dataset=Dataset.from_list(data),
        processing_class=loaded.processor,
        peft_config=LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "v_proj"]),
        callbacks=[Timer()],
        **extra,
    )
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    peak = (
        torch.cuda.max_memory_allocated() / 2**20
        if on_gpu
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    warm = max(2, steps // 4)
    return {
        "variant": variant,
        "step_s": statistics.median(times[warm:]),
        "peak_mib": peak,
        "device": "cuda" if on_gpu else "cpu",
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--one", choices=["weighted", "plain"])
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_one(args.one, args.steps, args.hidden, args.batch, Path(tmp))))
        return
    results: dict[str, list[dict]] = {"plain": [], "weighted": []}
    for _ in range(args.repeats):
        for variant in ("plain", "weighted"):
            command = [
                sys.executable,
                __file__,
                "--one",
                variant,
                "--steps",
                str(args.steps),
                "--hidden",
                str(args.hidden),
                "--batch",
                str(args.batch),
            ]
            done = subprocess.run(command, capture_output=True, text=True, check=True)
            results[variant].append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = {
        v: (statistics.median(r["step_s"] for r in rs), max(r["peak_mib"] for r in rs)) for v, rs in results.items()
    }
    device = results["plain"][0]["device"]
    print(
        f"device: {device}; hidden {args.hidden}, 4 layers, 64 px images, {args.batch} pairs/step (half visual), "
        f"{args.steps} steps x {args.repeats} runs"
    )
    print("| trainer | step time (s, median) | peak memory (MiB) |")
    print("|---|---|---|")
    for variant, (step, peak) in summary.items():
        print(f"| {'TRL DPOTrainer' if variant == 'plain' else 'WeightedDPOTrainer'} | {step:.4f} | {peak:.0f} |")
    (plain_t, plain_m), (ours_t, ours_m) = summary["plain"], summary["weighted"]
    print(
        f"\nratio weighted/plain: time {ours_t / plain_t:.3f}x (goal <= 1.10), memory {ours_m / plain_m:.3f}x (goal "
        "<= 1.05)"
    )


if __name__ == "__main__":
    main()
