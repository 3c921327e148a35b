"""The curation DAG: ingest -> localize -> noise -> hallucinate -> score -> assemble."""

from __future__ import annotations

from prefect import flow

from tasks.config import RunConfig
from tasks.ingest import ingest_task, snapshot_sources_task
from tasks.store import Manifest


@flow(name="curate", flow_run_name="curate-{config.name}")
def curate(config: RunConfig) -> dict[str, Manifest]:
    store = str(config.store)
    sources = snapshot_sources_task(config.ingest)
    ingest = ingest_task(store, config.ingest, sources)
    return {"ingest": ingest}
