"""Flow: preference set -> train (a task tagged `gpu`). `mmedpo train --config FILE.yaml --preferences SET`.

The train task is tagged ``gpu`` so a deployment can route it to a GPU work pool; run
locally it trains on whatever the machine has (CPU included). Several processes train through
``accelerate launch`` on a node of several GPUs (``train.num_processes: auto``, one rank per GPU),
when ``train.num_processes`` is above 1 (GPUs or gloo CPU processes), or with
``train.accelerate_config`` (models/accelerate/zero3.yaml is the paper's DeepSpeed ZeRO-3 setup);
docs/gpu.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefect import flow

from models.training import ADAPTER
from tasks.config import RunConfig, TrainConfig, load_run_config
from tasks.sets import resolve_set
from tasks.sft import model_dir
from tasks.store import ArtifactStore, Keyed, Manifest
from tasks.train import CODE, STAGE, preference_snapshot, train_inputs, train_task


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
    settings, assemble, locations, union = train_request(config, preferences, sft, init)
    if not union:
        return train_task(str(config.store), settings, assemble, locations[0], resume, sft, init=init)
    return train_task(str(config.store), settings, assemble, locations, resume, sft, union, init)


def train_request(
    config: RunConfig, preferences: str | list[str], sft: Manifest | None, init: Manifest | None
) -> tuple[TrainConfig, Keyed, list[str], list[Keyed]]:
    """What the train task gets: its settings (the sft checkpoint, the adapter continued), the
    newest set's identity, every set's location, and the union's identities."""
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
    return settings, assemble, [str(path)] + [str(p) for _, p in more], [keyed for keyed, _ in more]


# The deployment (prefect.yaml) whose work pool has the GPUs.
TRAIN_DEPLOYMENT = "train/train"


def train_on_gpu_pool(
    config: RunConfig, preferences: str | list[str], sft: Manifest | None = None, init: Manifest | None = None
) -> Manifest:
    """Training as a step of ``pipeline`` and ``iterate``.

    Run as a deployment (by a worker of the ``local`` pool), the parent submits the ``train``
    deployment - a worker of the ``gpu`` pool runs it - waits for it, and reads the artifact it
    published from the shared store: a task tag does not move a sub-flow to another pool. Before
    that, the parent drops the models it holds (SAM, the sampled VLM) and the allocator's cache.
    Run from the CLI or a test (no deployment), training is the ``train`` sub-flow, here.
    """
    from prefect.runtime import deployment

    if deployment.get_id() is None:
        return train_flow(config, preferences, sft=sft, init=init)
    from prefect.deployments import run_deployment

    from models import resident

    resident.release()
    parameters = {"config": config.model_dump(mode="json"), "preferences": preferences, "sft": sft, "init": init}
    run = run_deployment(TRAIN_DEPLOYMENT, parameters=jsonable(parameters), timeout=None)
    if not run.state or not run.state.is_completed():
        raise RuntimeError(f"{TRAIN_DEPLOYMENT} run {run.name} ended {run.state.name if run.state else 'unknown'}")
    settings, assemble, _, union = train_request(config, preferences, sft, init)
    store = ArtifactStore(config.store)
    key = store.key(STAGE, CODE, settings, train_inputs(assemble, sft, union, init))[0]
    published = store.get(STAGE, key)
    if published is None:
        raise RuntimeError(
            f"{TRAIN_DEPLOYMENT} run {run.name} completed but {config.store}/{STAGE}/{key} is not there: "
            "the gpu pool's workers must share this run's store"
        )
    return published


def jsonable(value: Any) -> Any:
    from pydantic import TypeAdapter

    return TypeAdapter(Any).dump_python(value, mode="json")


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
