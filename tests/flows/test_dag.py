"""The curation DAG is declared once (flows/dag.py): curate, sft and explain read that object,
and the declaration agrees with the stages' task signatures."""

from __future__ import annotations

import inspect

from flows import curate, dag, explain
from flows import sft as sft_flow
from tasks.config import IngestConfig, RunConfig, SFTConfig
from tests.support.raw_jsonl import append_records


def test_explain_and_the_flows_read_the_one_declaration():
    assert explain.DAG is dag.DAG
    assert curate.CURATION is dag.CURATION
    assert sft_flow.SFT is dag.SFT and sft_flow.CURATION is dag.CURATION
    assert dag.DAG[: len(dag.CURATION)] == dag.CURATION
    assert [step.name for step in dag.DAG] == [
        "ingest",
        "localize",
        "noise",
        "hallucinate",
        "score",
        "assemble",
        "sft",
    ]


def test_explain_lists_the_stages_in_the_declared_order(tmp_path):
    config = RunConfig(
        name="d",
        store=tmp_path / "store",
        ingest=IngestConfig(sources=[append_records(tmp_path / "raw", 0, 2)]),
        sft=SFTConfig(),
    )
    stages = [verdict.stage for verdict in explain.explain(config)]
    assert stages[: len(dag.DAG)] == [step.name for step in dag.DAG]


def test_each_step_takes_what_its_task_takes_after_store_and_config():
    seen: set[str] = set()
    for step in dag.DAG:
        assert set(step.inputs) <= seen, f"{step.name} reads a stage declared after it"
        parameters = list(inspect.signature(step.task.fn).parameters)
        assert parameters[:2] == ["store_root", "config"], step.name
        assert tuple(parameters[2:]) == step.inputs + step.context, step.name
        seen.add(step.name)
