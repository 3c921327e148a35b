"""The curation DAG, declared once: each stage, the stages whose artifacts it takes (in its
task's argument order) and the run-config section it reads (named as the stage).

`curate` runs ``CURATION`` in order, `explain` judges every step of ``DAG`` (the curation and the
sft that trains from its ingest), the sft flow takes its ``SFT`` step. A stage added here is run,
explained and keyed by all of them; nothing else lists the stages.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from prefect.utilities.annotations import opaque
from pydantic import BaseModel

from tasks import assemble, hallucinate, ingest, localize, noise, score, sft
from tasks.config import RunConfig


@dataclass(frozen=True)
class Step:
    module: ModuleType  # the stage: STAGE, CODE and its `<STAGE>_task`
    inputs: tuple[str, ...] = ()  # upstream steps, in the task's argument order
    context: tuple[str, ...] = ()  # keyword arguments the flow passes from outside the DAG

    @property
    def name(self) -> str:
        return self.module.STAGE

    @property
    def code(self) -> str:
        return self.module.CODE

    @property
    def task(self) -> Callable[..., Any]:
        return getattr(self.module, f"{self.name}_task")

    def settings(self, config: RunConfig) -> BaseModel | None:
        return getattr(config, self.name)

    def run(self, config: RunConfig, done: Mapping[str, Any], **context: Any) -> Any:
        """This step's task on the artifacts ``done`` holds for its inputs."""
        given = {name: context[name] for name in self.context}
        # opaque: Prefect finds the upstream task run by the artifact itself, without walking into
        # its manifest's file index (a 16k-sample set's: seconds per run, for no dependency).
        upstream = (opaque(done[name]) for name in self.inputs)
        return self.task(str(config.store), self.settings(config), *upstream, **given)


CURATION: tuple[Step, ...] = (
    Step(ingest),
    Step(localize, ("ingest",)),
    Step(noise, ("ingest", "localize")),
    # policy: the adapter a round of `mmedpo iterate` samples rejections from.
    Step(hallucinate, ("ingest",), context=("policy",)),
    Step(score, ("ingest", "hallucinate", "localize")),
    # previous: the images of the set's last published version, which the new one links when unchanged.
    Step(assemble, ("ingest", "localize", "noise", "hallucinate", "score"), context=("previous",)),
)
SFT = Step(sft, ("ingest",))
# Every stage keyed before train (train and evaluate take their inputs from these artifacts).
DAG: tuple[Step, ...] = (*CURATION, SFT)
