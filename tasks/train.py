"""Stage train: weighted DPO with LoRA on a preference set; the adapter is the artifact."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from prefect import task

from models import training
from models.launching import launch_plan
from tasks import counters, ui
from tasks.catalog import TRAIN_COLUMNS
from tasks.config import ConfigError, TrainConfig
from tasks.counters import Counters
from tasks.sets import load_pairs
from tasks.store import ArtifactStore, Keyed, Manifest, SourceSnapshot, code_version, file_digest, stage_task_options

STAGE = "train"
# The data-parallel launch settings decide how a run trains, so they count as its code (the
# training program, models/training.py, is imported: its code counts through the import graph).
CODE = code_version(__name__, data=("models/accelerate/ddp.yaml", "models/accelerate/cpu-ddp.yaml"))
# How a run went, not what it made: timings and losses in the logs, where the base model was.
# The adapter (and a tiny model built inside) is the artifact's content.
VOLATILE = ("log_history.json", "metrics.json", "base_model.txt", "adapter/README.md")  # peft's model card


def train(
    store: ArtifactStore,
    config: TrainConfig,
    assemble: Keyed,
    preferences: Path | Sequence[Path],
    resume: bool = False,
    sft: Manifest | None = None,
    union: Sequence[Keyed] = (),
    init: Manifest | None = None,
) -> Manifest:
    """Weighted DPO with LoRA on a preference set; the adapter is the artifact.

    ``assemble`` identifies the preference set (its manifest, or a snapshot of a Parquet file)
    found at ``preferences``; ``union``, more sets trained on together with it (`mmedpo iterate`
    from the base: every round's set), found at the further ``preferences`` in order - a pair in
    several of them is trained on once. ``sft``, when given, is the sft artifact whose checkpoint
    ``config.model`` names (lineage; the checkpoint itself is identified by its content);
    ``init``, the train artifact whose adapter ``config.init_adapter`` names (training continues
    it: `mmedpo iterate` from the previous round; the DPO reference stays the base model).
    The training program (models/training.py) does the work, in this process or in each process of
    ``accelerate launch`` (``python -m models.training JOB.json``) for multi-GPU / DeepSpeed ZeRO-3
    training. Checkpoints live under ``<store>/train/.checkpoints/<key>/`` so a killed run resumes
    (``resume=True``) from its last checkpoint; once the adapter is published they are removed
    (``keep_checkpoints`` keeps them).

    Output: ``adapter/`` (peft), ``metrics.json``, ``log_history.json``, ``base_model.txt``
    (and ``tiny-model/`` when no model is configured). Counters: ``pairs.in_set``,
    ``pairs.trained.<text|visual>``, ``pairs.skipped.<reason>`` (``duplicate``: in an earlier set
    of the union too), ``train.steps``, ``train.loss``, ``train.resumed``, ``train.last.<logged metric>``.
    """
    locations = [preferences] if isinstance(preferences, Path) else list(preferences)
    if len(locations) != 1 + len(union):
        raise ValueError(f"train: {len(locations)} preference locations for {1 + len(union)} sets")
    check_init_adapter(config)
    inputs = train_inputs(assemble, sft, union, init)
    checkpoints = checkpoint_dir(store, config, inputs)

    def build(out: Path) -> dict[str, float]:
        return build_adapter(out, config, locations, checkpoints, resume)

    manifest = store.run(STAGE, CODE, config, inputs, build, VOLATILE)
    if not config.keep_checkpoints:
        # Published: only an unfinished run resumes from them (for a 7B model, gigabytes per key).
        shutil.rmtree(checkpoints, ignore_errors=True)
    return manifest


def train_inputs(
    assemble: Keyed, sft: Manifest | None, union: Sequence[Keyed] = (), init: Manifest | None = None
) -> dict[str, Keyed]:
    """The stage's inputs, named as the train task's parameters are (a list's items as
    ``union.<i>``), so the store's key and Prefect's cache key agree."""
    inputs: dict[str, Keyed] = {"assemble": assemble}
    inputs.update({f"union.{i}": keyed for i, keyed in enumerate(union)})
    if sft is not None:
        inputs["sft"] = sft
    if init is not None:
        inputs["init"] = init
    return inputs


def check_init_adapter(config: TrainConfig) -> None:
    """An adapter to continue must exist, sit on a configured model and have the configured shape
    (its own r, alpha and dropout are what trains: the config must not say otherwise)."""
    adapter = config.init_adapter
    if adapter is None:
        return
    if config.model is None:
        raise ConfigError("train.init_adapter needs train.model (the base model the adapter was trained on)")
    path = Path(adapter) / "adapter_config.json"
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"train.init_adapter: {path}: not a saved peft adapter ({exc})") from exc
    for field, key in (("lora_r", "r"), ("lora_alpha", "lora_alpha"), ("lora_dropout", "lora_dropout")):
        if saved.get(key) != getattr(config, field):
            raise ConfigError(
                f"train.init_adapter: {path} has {key}={saved.get(key)} but train.{field} is {getattr(config, field)}"
            )


def checkpoint_dir(store: ArtifactStore, config: TrainConfig, inputs: dict[str, Keyed]) -> Path:
    return store.root / STAGE / ".checkpoints" / store.key(STAGE, CODE, config, inputs)[0]


def preference_snapshot(path: Path) -> SourceSnapshot:
    """A Parquet file given directly (not through the store) is identified by its bytes."""
    return SourceSnapshot(name="assemble", key=file_digest(path)[:16])


def select_pairs(
    preferences: Path | Sequence[Path], config: TrainConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, float]]:
    """The rows trained on (of one set, or of several in order), the usable rows held out of
    training (``train.heldout``), and counters for every row left out and why. A pair that an
    earlier set holds too (same id, texts and image contents) is a duplicate: a visual pair, the
    same in every round of `mmedpo iterate`, trains once."""
    locations = [preferences] if isinstance(preferences, Path) else list(preferences)
    rows = [row for location in locations for row in load_pairs(location, columns=TRAIN_COLUMNS).to_pylist()]
    counts = Counters()
    counts.add("pairs", "in_set", n=len(rows))
    counts.add("pairs", "trained", n=0)
    kept, held, seen = [], [], set()
    for row in rows:
        identity = (row["pair_id"], row["prompt"], row["chosen"], row["rejected"]) + tuple(
            Path(row[side]).name
            for side in ("chosen_image", "rejected_image")  # images are named by content
        )
        reason = "duplicate" if identity in seen else pair_problem(row, config)
        if reason:
            counts.add("pairs", "skipped", reason)
            continue
        seen.add(identity)
        if is_held_out(sample_identity(row), config.heldout):
            held.append(row)
            counts.add("pairs", "heldout", row["pair_type"])
            continue
        kept.append(row)
        counts.add("pairs", "trained", row["pair_type"])
    return kept, held, counts.as_dict()


def sample_identity(row: dict[str, Any]) -> str:
    """What a sample's pairs share - its question, answer and clean image (named by content) - so
    its text and visual pairs are held out together: a held-out pair whose sibling trained would
    score an answer the model was just taught."""
    return "\x1f".join((row["prompt"], row["chosen"], Path(row["chosen_image"]).name))


def is_held_out(identity: str, share: float) -> bool:
    """Whether a sample falls in the held-out ``share``: by a hash of its identity, so the same in every run."""
    fraction = int.from_bytes(hashlib.sha256(identity.encode()).digest()[:8], "big") / 2**64
    return fraction < share


def pair_problem(row: dict[str, Any], config: TrainConfig) -> str | None:
    if row["split"] not in config.splits:
        return "split"
    if row["pair_type"] not in config.pair_types:
        return "pair_type"
    if not (isinstance(row["weight"], float) and math.isfinite(row["weight"]) and row["weight"] >= 0):
        return "bad_weight"
    if not Path(row["chosen_image"]).is_file() or not Path(row["rejected_image"]).is_file():
        return "missing_image"
    if row["pair_type"] == "text" and row["chosen"] == row["rejected"]:
        return "identical_answers"
    if row["pair_type"] == "visual" and row["chosen_image"] == row["rejected_image"]:
        return "identical_images"
    return None


def build_adapter(
    out: Path, config: TrainConfig, preferences: Sequence[Path], checkpoints: Path, resume: bool
) -> dict[str, float]:
    pairs, heldout, counts = select_pairs(preferences, config)
    if not pairs:
        raise ValueError(f"{', '.join(map(str, preferences))}: no pair left to train on ({counts})")
    if not resume:
        shutil.rmtree(checkpoints, ignore_errors=True)
    checkpoints.mkdir(parents=True, exist_ok=True)
    plan = launch_plan(config)
    settings = training.FitSettings.of(config, plan.processes)
    job = training.Job(settings=settings, pairs=pairs, heldout=heldout, out=out, checkpoints=checkpoints, resume=resume)
    return {**counts, **training.run(job, plan)}


@task(**stage_task_options(STAGE, CODE, tags=["gpu"]))
def train_task(
    store_root: str,
    config: TrainConfig,
    assemble: Keyed,
    preferences: str | list[str],
    resume: bool = False,
    sft: Manifest | None = None,
    union: list[Keyed] | None = None,
    init: Manifest | None = None,
) -> Manifest:
    locations = [Path(preferences)] if isinstance(preferences, str) else [Path(p) for p in preferences]
    manifest = train(ArtifactStore(store_root), config, assemble, locations, resume, sft, union or (), init)
    ui.manifest_markdown(manifest)
    ui.table(f"{STAGE}-counts", counters.rows(manifest.counts), "train: pairs used, skipped and final metrics")
    return manifest
