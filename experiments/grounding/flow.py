"""Flow `experiment`: the grounding experiment, every arm through the real flows.

    grounding data -> curate (per arm; shared stages reused by the store)
                   -> sft (per seed) -> train (per arm and seed; not for `sft`)
                   -> evaluate -> measure -> bench/experiment.md + plot

``make experiment`` runs it (``mmedpo experiment``, or ``python -m experiments.grounding.flow``);
everything lands in the store, so a re-run recomputes nothing and only rewrites the report.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path
from typing import Any

from prefect import flow

from experiments.grounding.arms import REFERENCE_ARM, arm_config, base_run_config
from experiments.grounding.config import ExperimentConfig
from experiments.grounding.data import build_grounding_data
from experiments.grounding.measure import measure_task
from experiments.grounding.report import prior_accuracy, write_report
from flows.curate import curate
from flows.evaluate import evaluate_flow
from flows.train import train_flow
from tasks import catalog
from tasks.catalog import SAMPLES
from tasks.config import load_config
from tasks.sft import model_dir, sft_task
from tasks.store import content_hash


@flow(name="experiment", flow_run_name="experiment-{config.name}")
def experiment_flow(config: ExperimentConfig) -> list[dict[str, Any]]:
    started = time.perf_counter()
    source = build_grounding_data(config.data_root / content_hash(config.data, length=12), config.data)
    base = base_run_config(config, source)
    store = str(config.store)
    curated = {
        arm: curate(arm_config(base, arm)) for arm in dict.fromkeys([REFERENCE_ARM, *config.arms]) if arm != "sft"
    }
    ingest = curated[REFERENCE_ARM]["ingest"]
    built = {(m.stage, m.key): m.seconds for stages in curated.values() for m in stages.values()}
    rows = []
    for seed in config.seeds:
        tuned = sft_task(store, config.sft.model_copy(update={"seed": seed, "tiny_seed": seed}), ingest)
        checkpoint = model_dir(tuned)
        for arm in config.arms:
            run = arm_config(base, arm)
            run = run.model_copy(
                update={
                    "name": f"{run.name}-s{seed}",
                    "train": run.train.model_copy(update={"model": checkpoint, "seed": seed}),
                    "evaluate": run.evaluate.model_copy(update={"model": checkpoint}),
                }
            )
            trained = train_flow(run, curated[arm]["assemble"].key) if arm != "sft" else None
            evaluation = evaluate_flow(run, ingest, trained)
            scored = evaluation.trained or evaluation.base
            measured = measure_task(
                store, config.measure, ingest, curated[REFERENCE_ARM]["assemble"], tuned, scored, trained
            )
            rows.append({"arm": arm, "seed": seed, **measured.counts})
            for manifest in (tuned, trained, evaluation.base, evaluation.trained, measured):
                if manifest is not None:
                    built[(manifest.stage, manifest.key)] = manifest.seconds
    samples = catalog.rows(ingest, SAMPLES)
    machine = f"{platform.machine()} CPU, {_cores()} cores"
    timing = (time.perf_counter() - started, sum(built.values()))
    write_report(rows, config, prior_accuracy(samples, config.data.train_yes_rate), timing, machine)
    return rows


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def add_cli(subparsers: argparse._SubParsersAction) -> None:
    """`mmedpo experiment` (joined through the ``mmedpo.commands`` entry point group)."""
    parser = subparsers.add_parser(
        "experiment", help="the grounding experiment (all arms x seeds) -> bench/experiment.md"
    )
    parser.add_argument("--config", type=Path, help="YAML with ExperimentConfig fields (defaults: the full run)")
    parser.set_defaults(handler=run_cli)


def run_cli(args: argparse.Namespace) -> int:
    config = load_config(args.config, ExperimentConfig) if args.config else ExperimentConfig()
    rows = experiment_flow(config)
    print(f"{len(rows)} arm x seed results; report: {config.report}")
    return 0


if __name__ == "__main__":
    from flows.cli import main

    raise SystemExit(main(["experiment", *sys.argv[1:]]))
