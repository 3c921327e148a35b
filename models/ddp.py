"""Data-parallel training of ``WeightedDPOTrainer`` (``accelerate launch``: DDP on GPUs, gloo on CPUs).

The loss of an optimizer step is the weighted mean ``(1/N) sum_i w_i l_i`` over the N pairs of the
step. Each rank holds some of them and computes its sum ``S_r``; DDP then *averages* the ranks'
gradients. So each rank divides its sum by ``N / W``, N summed over the W ranks (one all-reduce of a
count per step, ``pairs_per_rank``): the average is ``sum_r S_r / N``, the loss and gradient of one
process holding the whole step, however the pairs fall on the ranks.

Every rank must still run the same number of micro-batches (each step's backward all-reduces on
every rank). accelerate's own sharding gets there by repeating the epoch's first pairs
(``even_batches``), which a weighted mean then counts twice, or not at all (a rank one micro-batch
short waits forever). ``train_dataloader`` instead deals each epoch's shuffled pairs into
``W * M`` micro-batches of at most ``batch_size`` pairs, ``M = ceil(N / (batch_size * W))`` per
rank, as even as they go, none repeated or dropped. Only an epoch with fewer pairs than
micro-batches (``batch_size`` 1 and an odd number of pairs on 2 ranks) leaves a slot empty: it gets
a *filler*, a copy of a pair with weight 0 that the count leaves out - zero loss, zero gradient.

Ranks then hold different numbers of pairs, so every per-pair metric gather pads to the longest
rank and drops the padding again (``gather_ragged``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

# Batch key: per pair, 1 for a pair of the set, 0 for a filler. Only data-parallel batches carry it.
COUNTED = "counted"
FILLER = "_filler"  # row key of a filler, turned into COUNTED by CountingCollator


def micro_batch_sizes(pairs: int, batch_size: int, world: int) -> list[int]:
    """Pairs in each of an epoch's ``world * M`` micro-batches, in the order accelerate deals them
    (micro-batch ``g`` to rank ``g % world``); a 0 is a slot only a filler can fill."""
    if pairs < 1:
        raise ValueError("no pair to train on")
    slots = world * math.ceil(pairs / (batch_size * world))
    base, extra = divmod(pairs, slots)
    return [base + (slot < extra) for slot in range(slots)]


class EvenSteps(Sampler[list[int]]):
    """Each epoch's micro-batches (lists of dataset indices) for all ranks, as ``micro_batch_sizes``
    lays them out; index ``pairs + j`` is the j-th filler.

    The order is a permutation seeded by ``seed + epoch``, the same on every rank. The epoch comes
    from ``epoch_of()`` when iteration starts (the trainer's step count): a run resumed in the middle
    of a later epoch gets that epoch's order, which accelerate's ``set_epoch`` chain does not
    reach through the batch-skipping loader it resumes with.
    """

    def __init__(self, pairs: int, sizes: list[int], seed: int, epoch_of: Callable[[], int]):
        self.pairs = pairs
        self.sizes = sizes
        self.seed = seed
        self.epoch_of = epoch_of

    def __len__(self) -> int:
        return len(self.sizes)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch_of())
        order = torch.randperm(self.pairs, generator=generator).tolist()
        start = filler = 0
        for size in self.sizes:
            if size:
                yield order[start : start + size]
                start += size
            else:
                yield [self.pairs + filler]
                filler += 1


class WithFillers(Dataset):
    """The training rows, then ``fillers`` copies of rows with weight 0, marked as fillers."""

    def __init__(self, rows: Any, fillers: int):
        self.rows = rows
        self.fillers = fillers

    def __len__(self) -> int:
        return len(self.rows) + self.fillers

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < len(self.rows):
            return self.rows[index]
        return {**self.rows[(index - len(self.rows)) % len(self.rows)], "weight": 0.0, FILLER: True}


class CountingCollator:
    """The trainer's collator, plus ``batch[COUNTED]`` (1 per pair of the set, 0 per filler)."""

    def __init__(self, collate: Callable[[list[dict[str, Any]]], dict[str, Any]]):
        self.collate = collate

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        rows = [dict(row) for row in rows]
        counted = torch.tensor([0 if row.pop(FILLER, False) else 1 for row in rows])
        batch = self.collate(rows)
        batch[COUNTED] = counted
        return batch


def train_dataloader(trainer: Any) -> DataLoader:
    """The training loader of one rank of a data-parallel run (see the module's docstring)."""
    args = trainer.args
    world = trainer.accelerator.num_processes
    rows = trainer.train_dataset
    sizes = micro_batch_sizes(len(rows), trainer._train_batch_size, world)
    steps_per_epoch = math.ceil(len(sizes) // world / args.gradient_accumulation_steps)
    sampler = EvenSteps(
        len(rows),
        sizes,
        seed=args.data_seed if args.data_seed is not None else args.seed,
        epoch_of=lambda: trainer.state.global_step // steps_per_epoch,
    )
    workers = args.dataloader_num_workers
    loader = DataLoader(
        WithFillers(rows, sizes.count(0)),
        batch_sampler=sampler,
        collate_fn=CountingCollator(trainer.data_collator),
        num_workers=workers,
        pin_memory=args.dataloader_pin_memory,
        persistent_workers=args.dataloader_persistent_workers and workers > 0,
        prefetch_factor=args.dataloader_prefetch_factor if workers > 0 else None,
    )
    # accelerate wraps the sampler in its BatchSamplerShard, which hands micro-batch g to rank g % W.
    return trainer.accelerator.prepare(loader)


def pairs_per_rank(accelerator: Any, batches: list[dict[str, Any]], device: torch.device) -> float | None:
    """The divisor of one rank's summed pair losses: the step's pairs on all ranks / number of ranks.

    Every rank calls this once per optimizer step (they run the same number of steps), so the
    all-reduce is matched."""
    local = sum(int(batch[COUNTED].sum()) if COUNTED in batch else len(batch["weight"]) for batch in batches)
    world = accelerator.num_processes
    total = local
    if world > 1:
        total = int(accelerator.reduce(torch.tensor(local, device=device, dtype=torch.long), reduction="sum").item())
    return total / world if total else None


def gather_ragged(accelerator: Any) -> None:
    """Make ``accelerator.gather`` (and so ``gather_for_metrics``) accept tensors whose first
    dimension differs across ranks: pad to the longest rank, gather, drop the padding. A plain
    gather of unequal shapes aborts the process under gloo and hangs under NCCL."""
    if getattr(accelerator.gather, "ragged", False):
        return
    gather = accelerator.gather

    def one(tensor: Any) -> Any:
        if not torch.is_tensor(tensor) or tensor.dim() == 0:
            return gather(tensor)
        sizes = gather(torch.tensor([tensor.shape[0]], device=tensor.device)).tolist()
        longest = max(sizes)
        if min(sizes) == longest:
            return gather(tensor)
        padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        chunks = gather(torch.cat([tensor, padding])).split(longest)
        return torch.cat([chunk[:size] for chunk, size in zip(chunks, sizes)])

    def ragged(data: Any) -> Any:
        if isinstance(data, (list, tuple)):
            return type(data)(ragged(item) for item in data)
        if isinstance(data, dict):
            return {key: ragged(value) for key, value in data.items()}
        return one(data)

    ragged.ragged = True  # type: ignore[attr-defined]
    accelerator.gather = ragged
