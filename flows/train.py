"""Flow: preference set -> train (a task tagged `gpu`). `mmedpo train --config FILE.yaml --preferences SET`.

The train task is tagged ``gpu`` so a deployment can route it to a GPU work pool; run
locally it trains on whatever the machine has (CPU included). Several processes train through
``accelerate launch`` on a node of several GPUs (``train.num_processes: auto``, one rank per GPU),
when ``train.num_processes`` is above 1 (GPUs or gloo CPU processes), or with
``train.accelerate_config`` (configs/accelerate/zero3.yaml is the paper's DeepSpeed ZeRO-3 setup);
docs/gpu.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow

from tasks.config import RunConfig, load_run_config
from tasks.sets import resolve_set
from tasks.sft import model_dir
from tasks.store import ArtifactStore, Keyed, Manifest
from tasks.train import ADAPTER, preference_snapshot, train_task


def resolve_preferences(config: RunConfig, ref: str) -> tuple[Keyed, Path]:
    """What to train on, and its identity for the train key. ``ref`` is a published set
    (NAME or NAME@VERSION under ``config.sets``), a set version folder, an assemble artifact
    key or content digest (a set version) in the store, or a Parquet file of pairs."""
    path = Path(ref)
    if path.is_file():
        return preference_snapshot(path), path.resolve()
    if (path / "manifest.json").is_file():
        return Manifest.model_validate_json((path / "manifest.json").read_text()), path.resolve()
    store = ArtifactStore(config.store)
    manifest = store.get("assemble", ref) or store.find_digest("assemble", ref)
    if manifest is not None:
        return manifest, Path(manifest.path)
    folder = resolve_set(config.sets, ref)
    return Manifest.model_validate_json((folder / "manifest.json").read_text()), folder


@flow(name="train", flow_run_name="train-{config.name}")
def train_flow(
    config: RunConfig,
    preferences: str | list[str],
    resume: bool = False,
    sft: Manifest | None = None,
    init: Manifest | None = None,
) -> Manifest:
    """``preferences``: one set, or several trained on at once (the first is the newest: the
    `assemble` input; the others are the union's). ``sft``: the sft artifact whose checkpoint is
    the base model (``train.model``). ``init``: the train artifact whose adapter training
    continues (``train.init_adapter``; the reference stays the base model)."""
    refs = [preferences] if isinstance(preferences, str) else list(preferences)
    if not refs:
        raise ValueError("train: no preference set given")
    (assemble, path), *more = [resolve_preferences(config, ref) for ref in refs]
    updates: dict[str, Path] = {}
    if sft is not None:
        updates["model"] = model_dir(sft)
    if init is not None:
        updates["init_adapter"] = Path(init.path) / ADAPTER
    settings = config.train.model_copy(update=updates) if updates else config.train
    if not more:
        return train_task(str(config.store), settings, assemble, str(path), resume, sft, init=init)
    locations = [str(path)] + [str(p) for _, p in more]
    union = [keyed for keyed, _ in more]
    return train_task(str(config.store), settings, assemble, locations, resume, sft, union, init)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="weighted-DPO training of a LoRA adapter on a preference set")
    parser.add_argument("--config", required=True, type=Path, help="run config YAML (its `train` section)")
    parser.add_argument(
        "--preferences",
        required=True,
        action="append",
        help="preference set: NAME[@VERSION], a set folder, an assemble key or a Parquet file; repeat it to "
        "train on several sets at once (the first is the newest)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint of this exact run")
    parser.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    refs = args.preferences[0] if len(args.preferences) == 1 else args.preferences
    manifest = train_flow(load_run_config(args.config), refs, args.resume)
    print(f"train artifact: {manifest.path}")
    return 0
