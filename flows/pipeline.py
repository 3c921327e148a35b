"""The whole MMedPO run as one parent flow: curate -> train -> evaluate, each a sub-flow."""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, ConfigDict

from flows.curate import curate
from flows.evaluate import Evaluation, evaluate_after_training
from flows.train import train_flow
from tasks.config import RunConfig
from tasks.store import Manifest


class PipelineResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    curated: dict[str, Manifest]
    train: Manifest
    evaluation: Evaluation


@flow(name="pipeline", flow_run_name="pipeline-{config.name}")
def pipeline(config: RunConfig) -> PipelineResult:
    curated = curate(config)
    trained = train_flow(config, curated["assemble"].key)
    evaluation = evaluate_after_training(config, trained, curated["ingest"])
    return PipelineResult(curated=curated, train=trained, evaluation=evaluation)
