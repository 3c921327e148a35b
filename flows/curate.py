"""The curation DAG (flows/dag.py): ingest -> localize -> noise -> hallucinate -> score -> assemble.

Endpoints configured with ``serve: <model folder>`` are served for the run (models/serve.py):
the server starts when a stage first needs it and stops when the flow ends, also when it
fails or is interrupted."""

from __future__ import annotations

from prefect import flow
from prefect.utilities.annotations import opaque

from flows.dag import CURATION
from models.serve import serving
from tasks.assemble import publish_task
from tasks.config import RunConfig
from tasks.runners import shard_runner
from tasks.sets import latest_images
from tasks.store import ArtifactStore, Manifest


@flow(name="curate", flow_run_name="curate-{config.name}")
def curate(config: RunConfig, policy: Manifest | None = None) -> dict[str, Manifest]:
    """``policy``: the train artifact whose adapter ``hallucinate.target.adapter`` names (a round of
    `mmedpo iterate`), so the set's lineage names the model that wrote its rejections."""
    done: dict[str, Manifest] = {}
    previous = latest_images(config.sets, config.name)
    with serving(ArtifactStore(config.store).digests), shard_runner(config.runner):
        for step in CURATION:
            done[step.name] = step.run(config, done, policy=policy, previous=str(previous) if previous else None)
        publish_task(opaque(done["assemble"]), str(config.sets), config.name)  # opaque: flows/dag.py
    return done
