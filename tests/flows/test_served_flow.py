"""A curation run that serves a model folder: the server is started for the run and is gone
after it, also when the run fails (a stand-in command plays the server here; the real
``transformers serve`` on the real model: tests/models/test_smollm2_served.py)."""

from __future__ import annotations

import json
import sys

import pytest

from flows.curate import curate
from tasks.config import HallucinateConfig, IngestConfig, JudgeConfig, RunConfig, ScoreConfig, SourceConfig
from tests.models.test_serve import alive
from tests.support.samples import write_random_image


def served_run(tmp_path, judges) -> tuple[RunConfig, object]:
    raw = tmp_path / "raw"
    raw.mkdir()
    lines = []
    for i, (question, answer) in enumerate([("Is there a mass?", "yes"), ("Which side?", "left lung")]):
        write_random_image(raw / f"{i}.png", seed=i, size=40)
        lines.append(json.dumps({"id": f"q{i}", "image": f"{i}.png", "question": question, "answer": answer}))
    (raw / "data.jsonl").write_text("\n".join(lines) + "\n")
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"stand-in")
    pids = tmp_path / "server.pids"
    command = [sys.executable, "-m", "tests.support.openai_server", "--port", "{port}", "--pid-file", str(pids)]
    served = {"serve": {"model": str(model), "command": command}, "backoff_s": 0, "max_retries": 0}
    config = RunConfig(
        name="served",
        store=tmp_path / "store",
        sets=tmp_path / "sets",
        ingest=IngestConfig(sources=[SourceConfig(format="jsonl", root=raw / "data.jsonl")]),
        hallucinate=HallucinateConfig(backend=["llm", "rules"], llm=served),
        score=ScoreConfig(judges=judges(served)),
    )
    return config, pids


@pytest.mark.slow
def test_the_server_is_stopped_after_a_failing_run(tmp_path, prefect_harness):
    # The second judge's folder holds no model: the score stage fails after hallucinate used the server.
    broken = tmp_path / "no-model"
    broken.mkdir()
    config, pids = served_run(
        tmp_path,
        lambda served: [
            JudgeConfig(name="served", kind="endpoint", endpoint=served),
            JudgeConfig(name="local", kind="transformers", model_path=broken),
        ],
    )
    with pytest.raises(RuntimeError, match="cannot load .*no-model"):
        curate(config)
    (pid,) = [int(line) for line in pids.read_text().split()]  # one server for the run, used by two stages
    assert not alive(pid)


@pytest.mark.slow
def test_a_served_run_completes_and_stops_its_server(tmp_path, prefect_harness):
    config, pids = served_run(tmp_path, lambda served: [JudgeConfig(name="served", kind="endpoint", endpoint=served)])
    result = curate(config)
    (pid,) = [int(line) for line in pids.read_text().split()]
    assert not alive(pid)
    # The stand-in echoes the prompt: too long for a wrong answer, so the rules took over; the judge
    # parsed the first yes/no of the echo. Both stages used the one server.
    assert result["hallucinate"].counts["backend[llm].failed.too_long"] == 2
    assert result["hallucinate"].counts["rejections.share.rules"] == 1.0
    assert result["score"].counts["text.ok"] == 2
