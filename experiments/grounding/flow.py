"""Flow `experiment`: the grounding experiment, every arm through the real flows, on each backbone.

    grounding data -> curate (per arm's set, once; shared stages reused by the store)
    per backbone:  sft (per seed)
                   -> learning-rate sweep on the first seed: train -> measure (val split) per arm and rate
                      (MMedPO's one-change variants train at MMedPO's rate)
                   -> per seed and arm, at the arm's validation-chosen rate:
                      train -> evaluate (test) -> measure (test split, held-out pairs)
                      (2 rounds: `mmedpo iterate` from the SFT checkpoint -> measure)
    -> bench/experiment.md + plot

``make experiment`` runs it (``mmedpo experiment``, or ``python -m experiments.grounding.flow``);
everything lands in the store, so a re-run recomputes nothing and only rewrites the report.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow

from experiments.grounding.arms import (
    REFERENCE_ARM,
    SAME_SET,
    SET_ARMS,
    arm_config,
    base_run_config,
    rounds_config,
    train_settings,
)
from experiments.grounding.config import SAME_RATE, BackboneConfig, ExperimentConfig, smollm2_backbone
from experiments.grounding.data import build_grounding_data
from experiments.grounding.measure import measure_task
from experiments.grounding.report import prior_accuracy, write_report
from flows.curate import curate
from flows.evaluate import evaluate_flow
from flows.iterate import iterate
from flows.train import train_flow
from tasks import catalog
from tasks.catalog import SAMPLES
from tasks.config import RunConfig, load_config
from tasks.sets import load_pairs
from tasks.sft import model_dir, sft_task
from tasks.store import Manifest, content_hash


@flow(name="experiment", flow_run_name="experiment-{config.name}")
def experiment_flow(config: ExperimentConfig) -> dict[str, Any]:
    started = time.perf_counter()
    ensure_text_models(config)
    source = build_grounding_data(config.data_root / content_hash(config.data, length=12), config.data)
    base = base_run_config(config, source)
    curated = {REFERENCE_ARM: curate(arm_config(base, REFERENCE_ARM))}
    weights = set_weights(curated[REFERENCE_ARM]["assemble"])
    mean_weight = sum(w for _, w in weights) / len(weights)
    wanted = {SAME_SET.get(arm, arm) for backbone in config.backbones for arm in backbone.arms}
    for arm in SET_ARMS:
        if arm in wanted and arm not in curated:
            curated[arm] = curate(arm_config(base, arm, mean_weight))
    built: dict[tuple[str, str], float] = {}
    record(built, *(m for stages in curated.values() for m in stages.values()))
    results: dict[str, Any] = {"rows": [], "sweep": [], "chosen": {}, "seconds": {}, "built": {}, "steps": {}}
    for backbone in config.backbones:
        began, before = time.perf_counter(), set(built)
        run_backbone(config, backbone, base, curated, results, built)
        results["seconds"][backbone.name] = time.perf_counter() - began
        # What this backbone's artifacts took to build, whether this invocation built them or reused them.
        results["built"][backbone.name] = sum(s for key, s in built.items() if key not in before)
    results["weights"] = weights
    results["mean_weight"] = mean_weight
    samples = catalog.rows(curated[REFERENCE_ARM]["ingest"], SAMPLES)
    machine = f"{platform.machine()} CPU, {_cores()} cores"
    timing = (time.perf_counter() - started, sum(built.values()))
    write_report(results, config, prior_accuracy(samples, config.data.train_yes_rate), timing, machine)
    return results


def run_backbone(
    config: ExperimentConfig,
    backbone: BackboneConfig,
    base: RunConfig,
    curated: dict[str, dict[str, Manifest]],
    results: dict[str, Any],
    built: dict[tuple[str, str], float],
) -> None:
    store = str(config.store)
    ingest, reference = curated[REFERENCE_ARM]["ingest"], curated[REFERENCE_ARM]["assemble"]
    tuned = {
        seed: sft_task(store, backbone.sft.model_copy(update={"seed": seed, "tiny_seed": seed}), ingest)
        for seed in backbone.seeds
    }
    record(built, *tuned.values())
    val = config.measure.model_copy(update={"split": "val", "margins": False})
    test = config.measure.model_copy(update={"split": "test"})
    first = backbone.seeds[0]
    chosen: dict[str, float] = {}
    for arm in [a for a in backbone.arms if a != "sft" and a not in SAME_RATE]:
        scored = []
        for rate in backbone.learning_rates:
            run = train_settings(base, arm, backbone, first, model_dir(tuned[first]), rate)
            trained = train_flow(run, curated[SAME_SET.get(arm, arm)]["assemble"].key)
            measured = measure_task(store, val, ingest, reference, tuned[first], None, trained)
            record(built, trained, measured)
            score = (measured.counts["closed_accuracy"] + measured.counts["counterfactual_accuracy"]) / 2
            scored.append((score, -rate, rate))
            results["sweep"].append(
                {"backbone": backbone.name, "arm": arm, "learning_rate": rate, "val_score": score, **measured.counts}
            )
        chosen[arm] = max(scored)[2]  # the best validation score; a tie goes to the smaller rate
    for arm in [a for a in backbone.arms if a in SAME_RATE]:
        chosen[arm] = chosen[SAME_RATE[arm]]
    results["chosen"][backbone.name] = chosen
    for seed in backbone.seeds:
        checkpoint = model_dir(tuned[seed])
        for arm in backbone.arms:
            trained, evaluation, steps = train_arm(
                config, backbone, base, curated, arm, seed, checkpoint, chosen, built
            )
            measured = measure_task(store, test, ingest, reference, tuned[seed], evaluation, trained)
            record(built, trained, evaluation, measured)
            results["rows"].append(
                {
                    "backbone": backbone.name,
                    "arm": arm,
                    "seed": seed,
                    "learning_rate": chosen.get(arm),
                    "steps": steps,
                    **measured.counts,
                }
            )


def train_arm(
    config: ExperimentConfig,
    backbone: BackboneConfig,
    base: RunConfig,
    curated: dict[str, dict[str, Manifest]],
    arm: str,
    seed: int,
    checkpoint: Path,
    chosen: dict[str, float],
    built: dict[tuple[str, str], float],
) -> tuple[Manifest | None, Manifest, float]:
    """(train artifact, evaluate artifact on the test split, optimizer steps) of one arm and seed; the
    build seconds of the artifacts made on the way (every round's curation) go into ``built``."""
    ingest = curated[REFERENCE_ARM]["ingest"]
    if arm == "sft":
        run = train_settings(base, "mmedpo", backbone, seed, checkpoint, backbone.learning_rates[0])
        return None, evaluate_flow(run, ingest, None).base, 0.0
    if arm == "mmedpo_rounds":
        run = rounds_config(base, config.rounds, backbone, seed, checkpoint, chosen[arm])
        result = iterate(run)
        steps = sum(r.train.counts.get("train.steps", 0.0) for r in result.rounds)
        for done in result.rounds:
            record(built, *done.curated.values(), done.train, done.evaluation.trained)
        last = result.rounds[-1]
        assert last.evaluation.trained is not None
        return last.train, last.evaluation.trained, steps
    run = train_settings(base, arm, backbone, seed, checkpoint, chosen[arm])
    trained = train_flow(run, curated[SAME_SET.get(arm, arm)]["assemble"].key)
    evaluation = evaluate_flow(run, ingest, trained)
    assert evaluation.trained is not None
    return trained, evaluation.trained, trained.counts.get("train.steps", 0.0)


def record(built: dict[tuple[str, str], float], *manifests: Manifest | None) -> None:
    """Note each artifact's build seconds (a reused one's too: what an empty store would spend)."""
    for manifest in manifests:
        if manifest is not None:
            built[(manifest.stage, manifest.key)] = manifest.seconds


def set_weights(assemble: Manifest) -> list[tuple[str, float]]:
    """(pair type, weight) of every training pair of a preference set."""
    pairs = load_pairs(Path(assemble.path), "train").to_pylist()
    return [(p["pair_type"], float(p["weight"])) for p in pairs]


def ensure_text_models(config: ExperimentConfig) -> None:
    """Pretrained language models a backbone composes or a judge runs (SmolLM2: converted from its
    wheel once)."""
    from models.smollm2 import FOLDER_NAME
    from tasks.smollm2 import ensure

    folders = [b.sft.text_model for b in config.backbones] + [j.model_path for j in config.score.judges]
    for folder in {Path(f) for f in folders if f is not None}:
        if folder.name == FOLDER_NAME:
            ensure(folder)


def full_depth(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` with the whole 30-layer SmolLM2 as its only backbone, reported beside the CPU run."""
    return config.model_copy(
        update={
            "backbones": [smollm2_backbone(layers=None)],
            "report": config.report.with_name(config.report.stem + "-full-depth.md"),
        }
    )


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """`mmedpo experiment` (joined through the ``mmedpo.commands`` entry point group)."""
    parser = subparsers.add_parser(
        "experiment", help="the grounding experiment (all backbones, arms and seeds) -> bench/experiment.md"
    )
    parser.add_argument("--config", type=Path, help="YAML with ExperimentConfig fields (defaults: the full run)")
    parser.add_argument(
        "--full-depth",
        action="store_true",
        help=(
            "the GPU run: only the pretrained backbone, all 30 SmolLM2 layers, 3 seeds; report "
            "bench/experiment-full-depth.md (hours on a CPU)"
        ),
    )
    parser.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    config = load_config(args.config, ExperimentConfig) if args.config else ExperimentConfig()
    if args.full_depth:
        config = full_depth(config)
    results = experiment_flow(config)
    print(f"{len(results['rows'])} backbone x arm x seed results; report: {config.report}")
    return 0


if __name__ == "__main__":
    from flows.cli import main

    raise SystemExit(main(["experiment", *sys.argv[1:]]))
