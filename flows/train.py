"""Flow: preference set -> train (a task tagged `gpu`). `mmedpo train --config FILE.yaml --preferences SET`.

The train task is tagged ``gpu`` so a deployment can route it to a GPU work pool; run
locally it trains on whatever the machine has (CPU included). Multi-GPU training goes
through ``accelerate launch`` when the run config's ``train.accelerate_config`` is set
(configs/accelerate/zero3.yaml is the paper's DeepSpeed ZeRO-3 setup).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from prefect import flow

from tasks.config import RunConfig, load_run_config
from tasks.store import ArtifactStore, Keyed, Manifest
from tasks.train import preference_snapshot, train_task

PREFERENCES_FILE = "preferences.parquet"


def resolve_preferences(store: ArtifactStore, ref: str) -> tuple[Keyed, Path]:
    """A preference set is a Parquet path or the key of an `assemble` artifact in the store."""
    path = Path(ref)
    if path.is_file():
        return preference_snapshot(path), path.resolve()
    manifest = store.get("assemble", ref)
    if manifest is None:
        raise FileNotFoundError(f"{ref!r} is neither a Parquet file nor an assemble artifact key in {store.root}")
    return manifest, manifest.file(PREFERENCES_FILE)


@flow(name="mmedpo-train")
def train_flow(config: RunConfig, preferences: str, resume: bool = False) -> Manifest:
    store = ArtifactStore(config.store)
    assemble, path = resolve_preferences(store, preferences)
    return train_task(str(store.root), config.train, assemble, str(path), resume)


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("train", help="weighted-DPO training of a LoRA adapter on a preference set")
    parser.add_argument("--config", required=True, type=Path, help="run config YAML (its `train` section)")
    parser.add_argument("--preferences", required=True, help="preference set: a Parquet file or an assemble artifact key")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint of this exact run")
    parser.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    manifest = train_flow(load_run_config(args.config), args.preferences, args.resume)
    print(f"train artifact: {manifest.path}")
    return 0
