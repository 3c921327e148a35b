"""Step time and peak memory per model family: WeightedDPOTrainer vs TRL's plain DPOTrainer.

For every family of models/families.py, the tiny model of models/tiny trains with both
trainers on the same four text pairs (TRL's trainer gives both sides of a pair the chosen image,
so text pairs are what both can train on), LoRA on the family's language model with its
projector trained too. Each (family, trainer) runs in its own subprocess (peak memory is per
process), the two in turn and in alternating order, ``--repeats`` times. Step time = median over the
timed steps after warm-up: wall time on GPU; on CPU the process's CPU time on one torch thread,
which other jobs on a shared machine disturb far less than wall time. Peak memory = CUDA max_memory_allocated on GPU,
else the process's max RSS. The ratios weighted / plain are what to read: both come from the
same run.

    python bench/train.py [--families llava qwen2_5_vl ...] [--steps 10] [--repeats 2] [--batch 4]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = ("plain", "weighted")


def main() -> None:
    from models.families import FAMILIES

    parser = argparse.ArgumentParser()
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--one", nargs=2, metavar=("FAMILY", "VARIANT"))
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_one(*args.one, args.steps, args.batch, Path(tmp))))
        return
    results: dict[tuple[str, str], list[dict]] = {}
    for repeat in range(args.repeats):
        for family in args.families:
            # Plain first, then weighted first: neither always runs on a machine the other just warmed.
            for variant in VARIANTS if repeat % 2 == 0 else VARIANTS[::-1]:
                command = [sys.executable, __file__, "--one", family, variant]
                command += ["--steps", str(args.steps), "--batch", str(args.batch)]
                done = subprocess.run(command, capture_output=True, text=True)
                if done.returncode != 0:
                    raise SystemExit(f"{family} {variant} failed:\n{done.stderr[-3000:]}")
                results.setdefault((family, variant), []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    report(results, args)


def run_one(family: str, variant: str, steps: int, batch: int, workdir: Path) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from models import vlm
    from models.dpo import WeightedDPOTrainer
    from models.pairs import ImagePairCollator, preference_example
    from models.tiny import build_tiny
    from tests.support.preference import preference_rows

    if not torch.cuda.is_available():
        # One thread: on a shared CPU, waiting worker threads spin and inflate the process's CPU time.
        torch.set_num_threads(1)
    loaded = vlm.load(build_tiny(family, workdir / "model"), move=False)
    rows = [r for r in preference_rows(workdir / "img") if r["pair_type"] == "text"]
    keys = ("prompt", "chosen", "rejected", "chosen_image", "rejected_image", "weight", "pair_type")
    if variant == "weighted":
        data = [preference_example(*(r[k] for k in keys)) for r in rows]
        trainer_class = WeightedDPOTrainer
        extra = {
            "data_collator": ImagePairCollator(loaded.processor),
            "projector_lr": 1e-3,
            "projector_module": loaded.family.projector_leaf,
        }
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
    on_gpu = torch.cuda.is_available()
    clock = time.perf_counter if on_gpu else time.process_time

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = clock()

        def on_step_end(self, args, state, control, **kwargs):
            if on_gpu:
                torch.cuda.synchronize()
            times.append(clock() - self.start)

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
    peft = LoraConfig(
        r=16,
        lora_alpha=32,
        target_modules=loaded.family.lora_target,
        modules_to_save=[loaded.family.projector_leaf],
    )
    trainer = trainer_class(
        model=loaded.model,
        args=args,
        train_dataset=Dataset.from_list(data),
        processing_class=loaded.processor,
        peft_config=peft,
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
        "step_s": statistics.median(times[warm:]),
        "peak_mib": peak,
        "device": f"{torch.cuda.get_device_name()}, bf16, wall time"
        if on_gpu
        else f"cpu ({torch.get_num_threads()} torch thread), fp32, process CPU time",
    }


def report(results: dict[tuple[str, str], list[dict]], args: argparse.Namespace) -> None:
    device = next(iter(results.values()))[0]["device"]
    print(
        f"device: {device}; {platform.processor() or platform.machine()}; {args.batch} text pairs/step, "
        f"{args.steps} steps x {args.repeats} runs per (family, trainer); tiny models of models/tiny"
    )
    columns = ["family", "TRL DPOTrainer step (s)", "WeightedDPOTrainer step (s)", "time ratio"]
    columns += ["TRL peak (MiB)", "weighted peak (MiB)", "memory ratio"]
    print("| " + " | ".join(columns) + " |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for family in args.families:
        plain, weighted = (results[(family, variant)] for variant in VARIANTS)
        plain_t, ours_t = (statistics.median(r["step_s"] for r in rs) for rs in (plain, weighted))
        plain_m, ours_m = (max(r["peak_mib"] for r in rs) for rs in (plain, weighted))
        print(
            f"| {family} | {plain_t:.4f} | {ours_t:.4f} | {ours_t / plain_t:.2f}x | {plain_m:.0f} | {ours_m:.0f} "
            f"| {ours_m / plain_m:.3f}x |"
        )


if __name__ == "__main__":
    main()
