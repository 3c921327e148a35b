"""Data-parallel WeightedDPOTrainer: the micro-batch layout, and 2 CPU processes (gloo) holding unequal
numbers of pairs giving the loss and gradient of one process holding the whole step."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.ddp import COUNTED, CountingCollator, EvenSteps, WithFillers, micro_batch_sizes
from models.lifetime import tied_to_this_process
from tests.support.ddp_step import one_step
from tests.support.preference import preference_rows

REPO = Path(__file__).resolve().parents[2]
LAUNCH_TIMEOUT_S = 600  # two ranks import torch/transformers/TRL on a loaded 2-core box


@pytest.mark.parametrize(
    ("pairs", "batch_size", "world", "sizes"),
    [
        (8, 2, 2, [2, 2, 2, 2]),
        (5, 3, 2, [3, 2]),  # accelerate's even_batches would give rank 1 a repeated pair
        (9, 4, 2, [3, 2, 2, 2]),  # its round-robin: [4, 4, 1] - rank 1 one micro-batch short
        (3, 1, 2, [1, 1, 1, 0]),  # one slot no pair can fill: a filler
        (41, 1, 2, [1] * 41 + [0]),
        (7, 4, 3, [3, 2, 2]),
    ],
)
def test_every_rank_gets_the_same_number_of_micro_batches(pairs, batch_size, world, sizes):
    assert micro_batch_sizes(pairs, batch_size, world) == sizes
    assert len(sizes) % world == 0 and sum(sizes) == pairs and max(sizes) <= batch_size


def test_an_epoch_deals_every_pair_once_and_fillers_weigh_nothing():
    rows = [{"weight": 1.0 + i, "id": i} for i in range(3)]
    sizes = micro_batch_sizes(3, 1, 2)
    epoch = {"now": 0}
    sampler = EvenSteps(3, sizes, seed=0, epoch_of=lambda: epoch["now"])
    first = list(sampler)
    assert len(first) == 4 and sorted(i for batch in first[:3] for i in batch) == [0, 1, 2] and first[3] == [3]
    assert list(sampler) == first  # the same epoch: the same order on every rank
    epoch["now"] = 1
    orders = {tuple(i for batch in list(sampler)[:3] for i in batch)}
    for epoch["now"] in range(2, 8):
        orders.add(tuple(i for batch in list(sampler)[:3] for i in batch))
    assert len(orders) > 1  # reshuffled per epoch

    data = WithFillers(rows, fillers=1)
    assert len(data) == 4 and data[3]["weight"] == 0.0 and data[3]["id"] == 0
    batch = CountingCollator(lambda rs: {"weight": torch.tensor([r["weight"] for r in rs])})([data[1], data[3]])
    assert batch["weight"].tolist() == [2.0, 0.0] and batch[COUNTED].tolist() == [1, 0]


def launch_ranks(cases: list[dict], result: Path, log: Path) -> list[dict]:
    """``tests/support/ddp_step.py`` in 2 gloo processes through accelerate's launcher."""
    spec = result.with_suffix(".json")
    spec.write_text(json.dumps(cases))
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "models/accelerate/cpu-ddp.yaml"),
        "-m",
        "tests.support.ddp_step",
        str(spec),
        str(result),
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    with log.open("w") as out:
        launcher = subprocess.Popen(
            tied_to_this_process(command), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            code = launcher.wait(timeout=LAUNCH_TIMEOUT_S)
        finally:
            if launcher.poll() is None:  # timed out: its ranks die with it
                launcher.terminate()
                try:
                    launcher.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    launcher.kill()
                    launcher.wait()
    assert code == 0, log.read_text()[-5000:]
    return torch.load(result, weights_only=False)


@pytest.mark.slow
def test_two_processes_with_unequal_pairs_give_the_loss_and_gradient_of_one(tiny_llava: Path, tmp_path: Path):
    rows = preference_rows(tmp_path / "img", [1.25, 0.5, 0.9, 0.2, 1.1, 0.75, 0.3, 1.6])
    cases = [
        # 5 pairs, 3 per micro-batch: rank 0 holds 3, rank 1 holds 2.
        {"rows": rows[:5], "batch_size": 3, "accumulation": 1},
        # 3 pairs, 1 per micro-batch, 2 micro-batches per step: rank 0 holds 2, rank 1 one and a filler.
        {"rows": rows[:3], "batch_size": 1, "accumulation": 2},
    ]
    for i, case in enumerate(cases):
        case.update(tiny=str(tiny_llava), out=str(tmp_path / f"ddp{i}"))
    distributed = launch_ranks(cases, tmp_path / "ddp.pt", tmp_path / "ddp.log")

    for case, ranks in zip(cases, distributed):
        whole = one_step(tiny_llava, case["rows"], tmp_path / "single", batch_size=len(case["rows"]), accumulation=1)
        assert whole["world"] == 1 and whole["held"] == [[len(case["rows"])]]
        assert ranks["world"] == 2 and ranks["backend"] == "gloo" and ranks["steps"] == 1
        held = [rank_steps[0] for rank_steps in ranks["held"]]
        assert sum(held) == len(case["rows"]) and held[0] != held[1]  # unequal shards, no pair repeated
        assert abs(ranks["loss"][0] - whole["loss"][0]) <= 1e-5, (ranks["loss"], whole["loss"])
        assert ranks["grads"].keys() == whole["grads"].keys()
        scale = max(float(g.abs().max()) for g in whole["grads"].values())
        assert scale > 1e-3  # the gradient is not trivially zero
        worst = max(float((ranks["grads"][n] - whole["grads"][n]).abs().max()) for n in whole["grads"])
        print(f"held {held}: loss {ranks['loss'][0]:.8f} vs {whole['loss'][0]:.8f}, max |dgrad| {worst:.1e}")
        assert worst <= 1e-5, f"max |grad difference| {worst:.2e} (largest gradient {scale:.2e})"
