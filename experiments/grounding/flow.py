"""Flow `experiment`: the grounding experiment's five arms through the product's flows.

    grounding data -> curate, once per set (A1 text, A2 local, A3 sham, A4 global); ingest the SFT's images
    then, in `workers` processes (flows on the same Prefect server), at once:
    pilot, on the tuning seed: pretrain the tower -> sft -> per learning rate: train A1 and A2 -> measure (val)
        -> the rate with the best mean val score of A1 and A2; A3, A4 (and A0) at it, measured on val
        -> stop when |A2 - A3| on the val relocation twins is under pilot_stop_points
    per test seed: pretrain the tower -> sft; once the pilot chose the rate: A0 evaluate; A1-A4 train at it
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
from concurrent.futures import Future, as_completed
from pathlib import Path
from typing import Any

import torch
from prefect import flow
from pydantic import BaseModel

from experiments.grounding.arms import REFERENCE_ARM, TRAINED, arm_config, sft_ingest, train_settings
from experiments.grounding.config import ARMS, TUNED_BY, ExperimentConfig, smoke, smollm2_backbone
from experiments.grounding.data import build_grounding_data
from experiments.grounding.measure import measure_task
from experiments.grounding.pretrain import seed_sft
from experiments.grounding.report import load_results, save_results, write_report
from experiments.grounding.workers import worker_pool
from flows.curate import curate
from flows.evaluate import evaluate_flow
from flows.train import train_flow
from tasks.config import RunConfig, load_config
from tasks.ingest import ingest_task
from tasks.sft import model_dir, sft_task
from tasks.store import Manifest, content_hash

# Each artifact's build seconds, by (stage, key): what an empty store would spend on it.
Built = dict[tuple[str, str], float]


@flow(name="experiment", flow_run_name="experiment-{config.name}")
def experiment_flow(config: ExperimentConfig) -> dict[str, Any]:
    """Runs the pilot, then (unless it stops the run) every test seed; returns the results it saved.
    The pilot and the test seeds' SFTs (which do not depend on the pilot's rate) run at once in
    ``config.workers`` processes; each test seed's arms follow its SFT once the pilot chose the rate."""
    started = time.perf_counter()
    torch.set_num_threads(config.threads)
    ensure_text_models(config)
    source = build_grounding_data(config.data_root / content_hash(config.data, length=12), config.data)
    built: Built = {}
    curation = curate_arms(config, source, built)
    results: dict[str, Any] = {
        "backbone": config.backbone.name,
        "machine": f"{platform.machine()} CPU, {_cores()} cores",
        "workers": config.workers,
        "threads": config.threads,
        "pairs": {arm: pair_counts(curation.assembled[arm]) for arm in TRAINED},
        "rows": [],
    }
    seeds = [] if config.pilot_only else config.backbone.seeds
    failed: list[BaseException] = []
    with worker_pool(config.workers) as pool:
        piloted = pool.submit(in_worker, "pilot", config, curation)
        starts = {pool.submit(in_worker, "start", config, curation, seed): seed for seed in seeds}
        results["pilot"] = collected(piloted, built, failed)
        if failed:
            raise failed[0]
        results["stopped"] = abs(results["pilot"]["gap_points"]) < config.pilot_stop_points
        finish(config, results, started, built)
        if results["stopped"]:
            for future in starts:
                future.cancel()  # the running ones finish: their artifacts stay in the store
            return results
        rate = results["pilot"]["learning_rate"]
        arms = []
        for future in as_completed(starts):
            tuned = collected(future, built, failed)
            if tuned is not None:
                arms.append(pool.submit(in_worker, "arms", config, curation, starts[future], tuned, rate))
        for future in as_completed(arms):
            rows = collected(future, built, failed)
            if rows is not None:
                results["rows"] = sorted(
                    [*results["rows"], *rows], key=lambda row: (row["seed"], ARMS.index(row["arm"]))
                )
                finish(config, results, started, built)
    if failed:
        raise failed[0]  # after every other seed finished and was saved
    return results


class Curation(BaseModel):
    """What every worker's jobs start from: the arms' run configs and their curated artifacts."""

    runs: dict[str, RunConfig]
    assembled: dict[str, Manifest]
    ingest: Manifest  # the reference arm's: every model is evaluated and measured on it
    sft_samples: Manifest


def curate_arms(config: ExperimentConfig, source: Path, built: Built) -> Curation:
    """Every arm's preference set (curate, once per set) and the SFT's samples."""
    runs = {arm: arm_config(config, source, arm) for arm in ("sft", *TRAINED)}
    curated = {arm: curate(runs[arm]) for arm in TRAINED}
    sft_samples = ingest_task(str(config.store), sft_ingest(source))
    record(built, sft_samples, *(m for stages in curated.values() for m in stages.values()))
    return Curation(
        runs=runs,
        assembled={arm: stages["assemble"] for arm, stages in curated.items()},
        ingest=curated[REFERENCE_ARM]["ingest"],
        sft_samples=sft_samples,
    )


def collected(future: Future, built: Built, failed: list[BaseException]) -> Any:
    """A worker job's result, its artifacts' build seconds noted in ``built``; None when the job failed,
    its error kept in ``failed`` so that the other seeds still run and are saved before it is raised."""
    try:
        value, seconds = future.result()
    except Exception as error:
        failed.append(error)
        return None
    built.update(seconds)
    return value


@flow(name="experiment-pilot", flow_run_name="experiment-{config.name}-pilot", validate_parameters=False)
def pilot_flow(config: ExperimentConfig, curation: Curation) -> tuple[dict[str, Any], Built]:
    """The tuning seed: the learning rate (best mean val score of A1 and A2), then every arm at it on val."""
    torch.set_num_threads(config.threads)
    backbone, store, built = config.backbone, str(config.store), {}
    seed = backbone.tuning_seed
    tuned = seed_sft_task(config, curation, seed, built)
    val = config.measure.model_copy(update={"split": "val"})

    def measured(arm: str, rate: float) -> dict[str, float]:
        if arm == "sft":
            found = measure_task(store, val, curation.ingest, tuned)
            record(built, found)
            return dict(found.counts)
        run = train_settings(curation.runs[arm], backbone, seed, model_dir(tuned), rate)
        trained = train_flow(run, curation.assembled[arm].key)
        found = measure_task(store, val, curation.ingest, tuned, None, trained)
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
    pilot = {"seed": seed, "sweep": sweep, "scores": scored, "learning_rate": rate, "arms": arms, "gap_points": gap}
    return pilot, built


@flow(name="experiment-start", flow_run_name="experiment-{config.name}-s{seed}-sft", validate_parameters=False)
def start_flow(config: ExperimentConfig, curation: Curation, seed: int) -> tuple[Manifest, Built]:
    """A test seed's SFT checkpoint (its tower pretrained first): what every arm of the seed starts from."""
    torch.set_num_threads(config.threads)
    built: Built = {}
    return seed_sft_task(config, curation, seed, built), built


@flow(name="experiment-arms", flow_run_name="experiment-{config.name}-s{seed}-arms", validate_parameters=False)
def arms_flow(
    config: ExperimentConfig, curation: Curation, seed: int, tuned: Manifest, rate: float
) -> tuple[list[dict[str, Any]], Built]:
    """Every arm on one test seed, from that seed's SFT checkpoint ``tuned``, measured on the test split."""
    torch.set_num_threads(config.threads)
    backbone, store, built = config.backbone, str(config.store), {}
    rows = []
    for arm in ("sft", *TRAINED):
        run = train_settings(curation.runs[arm], backbone, seed, model_dir(tuned), rate)
        trained = None if arm == "sft" else train_flow(run, curation.assembled[arm].key)
        evaluated = evaluate_flow(run, curation.ingest, trained)
        evaluation = evaluated.base if trained is None else evaluated.trained
        assert evaluation is not None
        found = measure_task(store, config.measure, curation.ingest, tuned, evaluation, trained)
        record(built, trained, evaluation, found)
        steps = 0.0 if trained is None else trained.counts.get("train.steps", 0.0)
        rows.append({"arm": arm, "seed": seed, "learning_rate": rate, "steps": steps, **found.counts})
    return rows, built


def in_worker(job: str, *args: Any) -> Any:
    """One worker job, by name: a job is a flow, and Prefect's flow objects do not pickle."""
    return {"pilot": pilot_flow, "start": start_flow, "arms": arms_flow}[job](*args)


def seed_sft_task(config: ExperimentConfig, curation: Curation, seed: int, built: Built) -> Manifest:
    """``seed``'s SFT artifact (its pretrained tower first), built or found in the store."""
    sft, start = seed_sft(str(config.store), config.backbone, config.data, seed)
    tuned = sft_task(str(config.store), sft, curation.sft_samples)
    record(built, start, tuned)
    return tuned


def finish(config: ExperimentConfig, results: dict[str, Any], started: float, built: Built) -> None:
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


def record(built: Built, *manifests: Manifest | None) -> None:
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
