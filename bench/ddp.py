"""Data-parallel training on this machine: `train.num_processes: 2` (2 gloo ranks through the train
stage's own launcher) against one process, on the same preference set, model and global batch.

Each run is the train stage as `mmedpo train` runs it (``tasks.train.train``: the store, the job,
the launcher for 2 processes) in a fresh interpreter, alternating. Reported: the stage's wall time
(the 2-process run also starts the launcher and two ranks, each importing torch and loading the
model) and the Trainer's own ``train_runtime`` (the training loop alone), as the ratio 2 / 1.
torchrun gives each rank one intra-op thread (OMP_NUM_THREADS=1); a single process takes every
core's thread by default, so a third run, one process with one thread, separates the two effects.

    python bench/ddp.py [--pairs 32] [--steps 16] [--repeats 2] [--hidden 256]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GLOBAL_BATCH = 4  # pairs per optimizer step: 4 x 1 process, or 2 x 2 processes


def settings(variant: str, model: Path, steps: int):
    from tasks.config import TrainConfig

    common = dict(
        model=model,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        learning_rate=1e-4,
        projector_lr=None,
        max_steps=steps,
        gradient_accumulation=1,
        max_length=None,
        gradient_checkpointing=False,
        save_steps=10_000,
        logging_steps=1,
    )
    if variant == "single":
        return TrainConfig(batch_size=GLOBAL_BATCH, **common)
    return TrainConfig(batch_size=GLOBAL_BATCH // 2, num_processes=2, **common)


def run_one(variant: str, work: Path, steps: int) -> dict:
    from tasks.store import ArtifactStore
    from tasks.train import preference_snapshot, train

    preferences = work / "preferences.parquet"
    config = settings(variant, work / "model", steps)
    start = time.perf_counter()
    manifest = train(
        ArtifactStore(work / f"store-{variant}-{os.getpid()}"), config, preference_snapshot(preferences), preferences
    )
    wall = time.perf_counter() - start
    history = json.loads(manifest.file("log_history.json").read_text())
    losses = [entry["loss"] for entry in history if "loss" in entry]
    return {
        "variant": variant,
        "wall_s": wall,
        "train_runtime_s": history[-1]["train_runtime"],
        "steps": manifest.counts["train.steps"],
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def prepare(work: Path, pairs: int, hidden: int) -> None:
    from models.tiny import build_tiny_llava
    from tests.support.preference import preference_rows, write_train_pairs

    build_tiny_llava(work / "model", seed=0, hidden_size=hidden, layers=4, image_size=64)
    rows = []
    for copy in range(-(-pairs // 8)):
        for i, row in enumerate(preference_rows(work / "img")):
            rows.append({**row, "pair_id": f"{row['pair_id']}-{copy}", "weight": 0.75 + 0.5 * ((i + copy) % 5) / 4})
    write_train_pairs(work / "preferences.parquet", rows[:pairs])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--one", choices=["single", "ddp"])
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.work, args.steps)), flush=True)
        return

    runs = {
        "single": ("1 process, 4 pairs/micro-batch", "single", {}),
        "single-1t": ("1 process, 1 thread", "single", {"OMP_NUM_THREADS": "1"}),
        "ddp": ("2 processes (gloo), 2 + 2", "ddp", {}),
    }
    results: dict[str, list[dict]] = {run: [] for run in runs}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        prepare(work, args.pairs, args.hidden)
        for _ in range(args.repeats):
            for run, (_, variant, env) in runs.items():
                command = [sys.executable, __file__, "--one", variant, "--work", str(work), "--steps", str(args.steps)]
                done = subprocess.run(command, capture_output=True, text=True, timeout=1200, env=os.environ | env)
                lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
                if done.returncode or not lines:
                    raise SystemExit(f"{run} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
                results[run].append(json.loads(lines[-1].removeprefix("RESULT ")))

    def median(variant: str, key: str) -> float:
        return statistics.median(r[key] for r in results[variant])

    print(
        f"{os.cpu_count()} CPUs; tiny LLaVA hidden {args.hidden}, 4 layers, 64 px; {args.pairs} pairs, "
        f"{GLOBAL_BATCH} per step, {args.steps} steps; LoRA r16; {args.repeats} runs each, alternating (medians)"
    )
    print("| run | stage wall (s) | training loop (s) | steps/s | first loss | last loss |")
    print("|---|---:|---:|---:|---:|---:|")
    for run, (name, _, _) in runs.items():
        loop = median(run, "train_runtime_s")
        print(
            f"| {name} | {median(run, 'wall_s'):.1f} | {loop:.2f} | {args.steps / loop:.2f} | "
            f"{median(run, 'first_loss'):.4f} | {median(run, 'last_loss'):.4f} |"
        )
    for baseline in ("single", "single-1t"):
        print(
            f"\nratio 2 processes / {runs[baseline][0]}: stage wall "
            f"{median('ddp', 'wall_s') / median(baseline, 'wall_s'):.2f}x, training loop "
            f"{median('ddp', 'train_runtime_s') / median(baseline, 'train_runtime_s'):.2f}x"
        )


if __name__ == "__main__":
    main()
