"""SFT step time of the grounding experiment's backbone: torch threads and activation checkpointing.

The backbone and its SFT settings are the experiment's (experiments/grounding/config.py): a LLaVA
on pretrained SmolLM2-135M-Instruct cut to 3 layers, a SigLIP tower of 16 image tokens, the parts
and batch size its SFT trains, on the grounding data's samples (both questions). Variants: two
torch threads on the two cores with TRL's default activation checkpointing (what the experiment
ran before), one thread with it, one thread without it (what it runs now). Each runs
``models.sft.fit_sft`` in its own process, in turn and in alternating order, ``--repeats`` times;
step time = wall time from one ``training_step`` to the next (forward, backward and the
optimizer), median over the steps after the first two. Wall time, not CPU time: on cores other
jobs share, a thread that waits for its descheduled sibling at every parallel region is the cost
being measured. The ratios to the first variant are what to read.

    python bench/sft.py [--steps 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.grounding.config import smollm2_backbone  # noqa: E402 - after the path

# name: (torch threads, activation checkpointing)
VARIANTS = {"2 threads, checkpointing": (2, True), "1 thread, checkpointing": (1, True), "1 thread": (1, False)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", choices=list(VARIANTS))
    args = parser.parse_args()
    if args.one:
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_one(*VARIANTS[args.one], args.steps, Path(tmp))))
        return
    steps: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name in list(VARIANTS) if repeat % 2 == 0 else list(VARIANTS)[::-1]:
            command = [sys.executable, __file__, "--one", name, "--steps", str(args.steps)]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"{name} failed:\n{done.stderr[-3000:]}")
            steps[name] += json.loads(done.stdout.strip().splitlines()[-1])
    base = statistics.median(steps[next(iter(VARIANTS))])
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end")
    print(
        f"{args.repeats} repeats x {args.steps} steps, 3-layer SmolLM2 LLaVA, batch {smollm2_backbone().sft.batch_size}"
    )
    print("| variant | SFT step (wall s, median) | ratio |")
    print("|---|---:|---:|")
    for name in VARIANTS:
        median = statistics.median(steps[name])
        print(f"| {name} | {median:.2f} | {median / base:.2f}x |")


def run_one(threads: int, checkpointing: bool, steps: int, work: Path) -> list[float]:
    """Per-step wall seconds of one SFT run (the steps after the first two)."""
    import torch
    from trl import SFTTrainer

    from experiments.grounding.config import GroundingDataConfig
    from experiments.grounding.data import build_grounding_data
    from models.sft import fit_sft
    from tasks.smollm2 import ensure

    torch.set_num_threads(threads)
    config = smollm2_backbone().sft
    ensure(config.text_model)
    batch = config.batch_size
    data = GroundingDataConfig(n_train=(steps * batch + 1) // 2, n_val=1, n_test=1)
    root = work / "data"
    rows = [json.loads(line) for line in build_grounding_data(root, data).read_text().splitlines()]
    samples = [(r["question"], r["answer"], str(root / r["image"])) for r in rows if r["split"] == "train"]
    starts: list[float] = []
    original = SFTTrainer.training_step

    def timed(self, *args, **kwargs):
        starts.append(time.perf_counter())
        return original(self, *args, **kwargs)

    SFTTrainer.training_step = timed
    settings = config.model_copy(update={"epochs": 1.0, "gradient_checkpointing": checkpointing})
    fit_sft(settings, samples[: steps * batch], work / "model", work / "checkpoints")
    return [b - a for a, b in zip(starts[2:], starts[3:])]


if __name__ == "__main__":
    main()
