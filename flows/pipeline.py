"""The whole MMedPO run as one parent flow: curate -> [sft] -> train -> evaluate, each a sub-flow.

The sft step runs when the run config has an ``sft:`` section; DPO then trains from its
checkpoint, and evaluation compares against that checkpoint.
"""

from __future__ import annotations

from prefect import flow
from pydantic import BaseModel, ConfigDict

from flows.curate import curate
from flows.evaluate import Evaluation, evaluate_after_training
from flows.sft import sft_flow
from flows.train import train_on_gpu_pool
from tasks.config import RunConfig
from tasks.store import Manifest


class PipelineResult(BaseModel):
    model_config = ConfigDict(frozen=True)
    curated: dict[str, Manifest]
    sft: Manifest | None
    train: Manifest
    evaluation: Evaluation


@flow(name="pipeline", flow_run_name="pipeline-{config.name}")
def pipeline(config: RunConfig) -> PipelineResult:
    curated = curate(config)
    tuned = sft_flow(config, curated["ingest"]) if config.sft is not None else None
    trained = train_on_gpu_pool(config, curated["assemble"].key, sft=tuned)
    evaluation = evaluate_after_training(config, trained, curated["ingest"])
    return PipelineResult(curated=curated, sft=tuned, train=trained, evaluation=evaluation)
