"""Flow `evaluate`: base model and trained adapter on the test split, then the before/after table.

    ingest + base model ------------------> evaluate (base)     -+
    ingest + base model + train adapter -> evaluate (trained)  -+-> compare (table + examples)

The base evaluation has no train input, so its artifact is shared by every training run
on the same samples and model. The train flow calls ``evaluate_flow`` as its last step;
``mmedpo evaluate --config FILE.yaml`` runs it on artifacts already in the store.
"""

from __future__ import annotations

import argparse
from typing import Any

from prefect import flow
from pydantic import BaseModel, ConfigDict

from tasks.config import RunConfig, load_run_config
from tasks.evaluate import EvaluateError, check_model, compare_task, evaluate_task, resolve_model
from tasks.evaluate.comparison import comparison_text
from tasks.store import ArtifactStore, Manifest
from tasks.store.lookup import trained_and_samples, upstream_artifact


class Evaluation(BaseModel):
    model_config = ConfigDict(frozen=True)
    base: Manifest
    trained: Manifest | None
    comparison: list[dict[str, Any]]


@flow(name="evaluate", flow_run_name="evaluate-{config.name}")
def evaluate_flow(config: RunConfig, ingest: Manifest, train: Manifest | None = None) -> Evaluation:
    settings = resolve_model(config.evaluate, train)
    assert settings.model is not None
    check_model(settings.model)
    store = str(config.store)
    base = evaluate_task(store, settings, ingest)
    trained = evaluate_task(store, settings, ingest, train) if train is not None else None
    rows = compare_task(base, trained, settings.examples)
    return Evaluation(base=base, trained=trained, comparison=rows)


def evaluate_after_training(config: RunConfig, train: Manifest, ingest: Manifest | None = None) -> Evaluation:
    """The train flow's last step: evaluate on the samples its preference set came from."""
    ingest = ingest or upstream_artifact(ArtifactStore(config.store), train, "ingest")
    if ingest is None:
        raise EvaluateError(
            f"train artifact {train.key} has no single ingest artifact in its lineage: pass the ingest to evaluate on"
        )
    return evaluate_flow(config, ingest, train)


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "evaluate",
        help="score the base model and a trained adapter on the test split; print the before/after table",
        description="Evaluate on the ingest artifact's test split (evaluate: section of the run file). "
        "Without --train the newest train artifact is used; without --ingest the one the train "
        "artifact's preference set came from, else the newest.",
    )
    parser.add_argument("--config", required=True, help="run config YAML")
    parser.add_argument(
        "--ingest", metavar="KEY", help="ingest artifact key (default: the train artifact's, else the newest)"
    )
    adapter = parser.add_mutually_exclusive_group()
    adapter.add_argument(
        "--train", metavar="KEY", help="train artifact key whose adapter is evaluated (default: the newest)"
    )
    adapter.add_argument("--base-only", action="store_true", help="evaluate the base model alone")
    parser.set_defaults(handler=run_cli)
    return parser


def run_cli(args: argparse.Namespace) -> int:
    config = load_run_config(args.config)
    store = ArtifactStore(config.store)
    train, ingest = trained_and_samples(store, args.train, args.ingest, args.base_only)
    if ingest is None:
        raise EvaluateError(f"no ingest artifact in {store.root}: run the curation flow first")
    settings = resolve_model(config.evaluate, train)
    assert settings.model is not None
    check_model(settings.model)  # a wrong model path fails here, with its reason, not inside the flow
    if train is None and not args.base_only:
        print(f"no train artifact in {store.root}: evaluating the base model alone")
    result = evaluate_flow(config, ingest, train)
    print(comparison_text(result.comparison))
    return 0
