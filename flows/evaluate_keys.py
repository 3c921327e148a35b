"""Flow `evaluate-keys`: the evaluate flow with parameters a person can type into the UI.

The deployment `evaluate` runs this: artifact keys (or nothing: the newest train artifact and
the ingest its preference set came from) instead of manifests, resolved as `mmedpo evaluate` does.
"""

from __future__ import annotations

from prefect import flow

from flows.evaluate import Evaluation, evaluate_flow
from tasks.config import RunConfig
from tasks.evaluate import EvaluateError
from tasks.store import ArtifactStore
from tasks.store.lookup import trained_and_samples


@flow(name="evaluate-keys", flow_run_name="evaluate-{config.name}")
def evaluate_keys(
    config: RunConfig, train: str | None = None, ingest: str | None = None, base_only: bool = False
) -> Evaluation:
    store = ArtifactStore(config.store)
    trained, samples = trained_and_samples(store, train, ingest, base_only)
    if samples is None:
        raise EvaluateError(f"no ingest artifact in {store.root}: run the curation flow first")
    return evaluate_flow(config, samples, trained)
