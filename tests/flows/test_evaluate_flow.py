"""The evaluate flow under a temporary Prefect backend: both evaluations, the comparison, UI artifacts."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from prefect.artifacts import Artifact

from flows import evaluate as flow
from flows.cli import main
from tasks.config import EvaluateConfig, RunConfig
from tasks.store import ArtifactStore
from tasks.store.lookup import upstream_artifact
from tests.support.adapter import train_artifact
from tests.support.samples import ingest_artifact, write_random_image

SPECS = [
    {"sample_id": "slake:1", "answer": "No"},
    {"sample_id": "slake:2", "question": "Which organ is abnormal?", "answer": "liver", "answer_type": "open"},
    {
        "sample_id": "iu:1",
        "dataset": "iu_xray",
        "task": "report",
        "answer_type": "report",
        "question": "Describe the findings of this chest X-ray.",
        "answer": "The heart is normal in size.",
    },
]


def run_config(tmp_path: Path, model: Path | None) -> RunConfig:
    settings = EvaluateConfig(model=model, max_new_tokens=6, report_max_new_tokens=8, meteor=False, examples=2)
    return RunConfig(store=tmp_path / "store", evaluate=settings)


@pytest.mark.slow
def test_flow_compares_base_and_trained(prefect_harness, tmp_path: Path, tiny_llava: Path) -> None:
    config = run_config(tmp_path, None)  # the base model comes from the adapter's record
    store = ArtifactStore(config.store)
    ingest = ingest_artifact(store, tmp_path / "images", SPECS)
    train = train_artifact(
        store, tiny_llava, write_random_image(tmp_path / "train.png", 99), "No, the lung is not healthy."
    )

    result = flow.evaluate_flow(config, ingest, train)

    assert result.base.inputs.keys() == {"ingest", "model"}
    assert result.trained is not None and result.trained.inputs["train"] == train.key
    metrics = {(r["dataset"], r["metric"]) for r in result.comparison}
    assert {
        ("slake", "closed_accuracy"),
        ("slake", "open_recall"),
        ("iu_xray", "bleu"),
        ("iu_xray", "rouge_l"),
    } <= metrics
    assert all(r["base"] is not None and r["trained"] is not None for r in result.comparison if r["metric"] != "meteor")
    table = Artifact.get("evaluate-comparison")
    assert table is not None and "closed_accuracy" in str(table.data)
    examples = Artifact.get("evaluate-examples")
    assert examples is not None and "| dataset | sample_id | question | reference | base | trained |" in str(
        examples.data
    )


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    flow.add_cli(parser.add_subparsers())
    return parser.parse_args(["evaluate", *argv])


def test_cli_reports_missing_artifacts_without_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_file = tmp_path / "run.yaml"
    run_file.write_text("store: store\nevaluate:\n  model: models/none\n")
    argv = ["evaluate", "--config", str(run_file), "--base-only"]
    assert main(argv) == 2
    assert "no ingest artifact" in capsys.readouterr().err

    ingest_artifact(ArtifactStore(tmp_path / "store"), tmp_path / "images", SPECS[:1])
    assert main(argv) == 2
    assert f"{tmp_path / 'models' / 'none'}: not a transformers checkpoint folder" in capsys.readouterr().err


def test_cli_base_only_prints_the_table(prefect_harness, tmp_path: Path, tiny_llava: Path, capsys) -> None:
    run_file = tmp_path / "run.yaml"
    run_file.write_text(f"store: store\nevaluate:\n  model: {tiny_llava}\n  max_new_tokens: 4\n  meteor: false\n")
    ingest_artifact(ArtifactStore(tmp_path / "store"), tmp_path / "images", SPECS[:2])
    args = cli_args("--config", str(run_file))
    assert args.handler(args) == 0
    out = capsys.readouterr().out
    assert "no train artifact" in out
    assert "slake    closed_accuracy" in out


def test_upstream_ingest_is_found_through_lineage(tmp_path: Path) -> None:
    from tasks.config import StageConfig

    store = ArtifactStore(tmp_path / "store")
    ingest = ingest_artifact(store, tmp_path / "images", SPECS[:1])
    ingest_artifact(store, tmp_path / "images2", SPECS[1:2])  # newer, unrelated
    assemble = store.run("assemble", "x", StageConfig(), {"ingest": ingest}, lambda out: {})
    train = store.run("train", "x", StageConfig(), {"assemble": assemble}, lambda out: {})
    assert upstream_artifact(store, train, "ingest") == ingest
    assert upstream_artifact(store, ingest, "train") is None
