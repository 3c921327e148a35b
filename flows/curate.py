"""The curation DAG: ingest -> localize -> noise -> hallucinate -> score -> assemble.

Endpoints configured with ``serve: <model folder>`` are served for the run (models/serve.py):
the server starts when a stage first needs it and stops when the flow ends, also when it
fails or is interrupted."""

from __future__ import annotations

from prefect import flow

from models.serve import serving
from tasks.assemble import assemble_task, publish_task
from tasks.config import RunConfig
from tasks.hallucinate import hallucinate_task
from tasks.ingest import ingest_task
from tasks.localize import localize_task
from tasks.noise import noise_task
from tasks.runners import shard_runner
from tasks.score import score_task
from tasks.store import Manifest


@flow(name="curate", flow_run_name="curate-{config.name}")
def curate(config: RunConfig, policy: Manifest | None = None) -> dict[str, Manifest]:
    """``policy``: the train artifact whose adapter ``hallucinate.target.adapter`` names (a round of
    `mmedpo iterate`), so the set's lineage names the model that wrote its rejections."""
    store = str(config.store)
    with serving(config.store), shard_runner(config.runner):
        ingest = ingest_task(store, config.ingest)
        localize = localize_task(store, config.localize, ingest)
        noise = noise_task(store, config.noise, ingest, localize)
        hallucinate = hallucinate_task(store, config.hallucinate, ingest, policy)
        score = score_task(store, config.score, ingest, hallucinate, localize)
        assemble = assemble_task(store, config.assemble, ingest, localize, noise, hallucinate, score)
        publish_task(assemble, str(config.sets), config.name)
    return {
        "ingest": ingest,
        "localize": localize,
        "noise": noise,
        "hallucinate": hallucinate,
        "score": score,
        "assemble": assemble,
    }
