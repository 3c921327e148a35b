"""The curation flow against misbehaving endpoints, and what it does with API keys.

Faults: the flow completes; failed samples are rows with reasons all the way to the
preference set's dropped table. Secrets: a key given through the environment (hallucinate's
endpoint) or a Prefect Secret block (a judge's endpoint) reaches the server and nothing else:
not the logs (pytest's and Prefect's), not a file in the store, the sets or Prefect's result
storage, not an artifact, not the flow run's parameters, not a stored error message.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from flows.curate import curate
from tasks import catalog
from tasks.config import (
    EndpointConfig,
    HallucinateConfig,
    IngestConfig,
    JudgeConfig,
    RunConfig,
    ScoreConfig,
    SourceConfig,
)
from tests.support.faults import CASES, FaultyResponder, question, refused_base_url
from tests.support.openai_server import OpenAIServer, Reply
from tests.support.samples import write_random_image


def jsonl_source(folder: Path, cases) -> SourceConfig:
    folder.mkdir(parents=True)
    lines = []
    for i, case in enumerate(cases):
        write_random_image(folder / f"{case}.png", seed=i, size=48)
        lines.append(
            json.dumps(
                {
                    "id": case,
                    "image": f"{case}.png",
                    "question": question(case),
                    "answer": "yes",
                    "boxes": [[4, 4, 30, 30]],
                }
            )
        )
    (folder / "data.jsonl").write_text("\n".join(lines) + "\n")
    return SourceConfig(format="jsonl", root=folder / "data.jsonl", name="f")


def endpoint(base_url: str, model: str = "m", **extra) -> EndpointConfig:
    return EndpointConfig(
        base_url=base_url,
        model=model,
        timeout_s=0.5,
        max_retries=1,
        backoff_s=0.0,
        max_backoff_s=5.0,
        capabilities={"structured_output": True},  # the JSON protocols (tests/support/faults.py answers JSON)
        **extra,
    )


@pytest.mark.slow
def test_curation_completes_against_a_faulty_endpoint(tmp_path, prefect_harness, openai_server):
    openai_server.set_responder(FaultyResponder())
    config = RunConfig(
        name="faults",
        store=tmp_path / "store",
        sets=tmp_path / "sets",
        ingest=IngestConfig(sources=[jsonl_source(tmp_path / "raw", CASES)]),
        hallucinate=HallucinateConfig(backend="llm", llm=endpoint(openai_server.base_url)),
        score=ScoreConfig(
            judges=[
                JudgeConfig(
                    name="med42", kind="endpoint", endpoint=endpoint(openai_server.base_url, "med42"), parse_retries=1
                ),
                JudgeConfig(name="offline", kind="endpoint", endpoint=endpoint(refused_base_url(), "biomistral")),
            ]
        ),
    )
    state = curate(config, return_state=True)
    assert state.is_completed(), state
    manifests = state.result()
    assert manifests["hallucinate"].counts["rejections.failed.llm_rate_limited"] == 1
    assert manifests["hallucinate"].counts["rejections.failed.llm_timeout"] == 1
    assert manifests["score"].counts["text.failed.no_judge_answered"] == 1  # the out-of-range judge
    assert manifests["score"].counts["judge[offline].excluded.unavailable_connection"] == 3

    assembled = manifests["assemble"]
    pairs = catalog.read_file(Path(assembled.path) / "data" / "train-00000-of-00001.parquet", catalog.PAIRS).to_pylist()
    text = {p["sample_id"].split(":")[-1] for p in pairs if p["pair_type"] == "text"}
    visual = {p["sample_id"].split(":")[-1] for p in pairs if p["pair_type"] == "visual"}
    assert text == {"ok", "flaky"} and visual == set(CASES)
    dropped = catalog.rows(assembled, catalog.DROPPED)
    assert {r["sample_id"].split(":")[-1] for r in dropped if r["pair_type"] == "text"} == {
        "limited",
        "slow",
        "outofrange",
    }


ENV_KEY = "sk-env-9d1f0c7a-from-the-environment"
BLOCK_KEY = "sk-block-4e2b8a61-from-a-secret-block"


def keyed_responder(request) -> str | Reply:
    """Checks the bearer token per role; two cases get a 401 whose body echoes the key back."""
    text = request.prompt_text
    judging = "clinical relevance" in text
    key = BLOCK_KEY if judging else ENV_KEY
    if request.headers.get("authorization") != f"Bearer {key}":
        return Reply(status=401)
    if ("(case injectecho)" in text and not judging) or ("(case judgeecho)" in text and judging):
        return Reply(status=401, body=json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}}).encode())
    if judging:
        return json.dumps({"score": 0.7, "reason": "clinically relevant"})
    return json.dumps({"rejected": "No", "error_type": "yes_no_flip"})


@pytest.mark.slow
def test_api_keys_never_leave_the_http_client(tmp_path, prefect_harness, monkeypatch, caplog, capfd):
    from prefect.blocks.system import Secret
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MMEDPO_TEST_LLM_KEY", ENV_KEY)
    Secret(value=BLOCK_KEY).save("mmedpo-test-judge-key", overwrite=True)
    with OpenAIServer(keyed_responder) as server:
        config = RunConfig(
            name="secrets",
            store=tmp_path / "store",
            sets=tmp_path / "sets",
            ingest=IngestConfig(sources=[jsonl_source(tmp_path / "raw", ["ok", "injectecho", "judgeecho"])]),
            hallucinate=HallucinateConfig(
                backend="llm", llm=endpoint(server.base_url, api_key_env="MMEDPO_TEST_LLM_KEY")
            ),
            score=ScoreConfig(
                judges=[
                    JudgeConfig(
                        name="med42",
                        kind="endpoint",
                        endpoint=endpoint(server.base_url, "med42", api_key_secret="mmedpo-test-judge-key"),
                    ),
                ]
            ),
        )
        state = curate(config, return_state=True)
        sent = {r.headers.get("authorization") for r in server.requests}
    assert state.is_completed(), state
    manifests = state.result()
    # The keys were used (the server rejects any other token), and the echoed ones were errors.
    assert sent == {f"Bearer {ENV_KEY}", f"Bearer {BLOCK_KEY}"}
    assert (
        manifests["hallucinate"].counts["rejections.ok"] == 2
        and manifests["hallucinate"].counts["rejections.failed.llm_http_401"] == 1
    )
    scores = catalog.rows(manifests["score"], catalog.SCORES)
    echoed = next(r for r in scores if r["sample_id"].endswith("judgeecho") and r["pair_type"] == "text")
    assert echoed["status"] == "failed" and "Incorrect API key provided: ***" in echoed["rounds"][0]["reason"]

    places: dict[str, str] = {"pytest log records": caplog.text, "stdout/stderr": "".join(capfd.readouterr())}
    APILogHandler().flush()  # the handler ships logs in batches: send what is queued
    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        places["prefect run logs"] = "\n".join(log.message for log in logs)
        places["prefect artifacts"] = "\n".join(f"{a.key} {a.description} {a.data}" for a in client.read_artifacts())
        places["flow run parameters"] = json.dumps(client.read_flow_run(flow_run_id).parameters, default=str)
    assert logs, "no Prefect run logs were read back"
    assert "score-judges" in places["prefect artifacts"]
    roots = [config.store, config.sets, Path(PREFECT_LOCAL_STORAGE_PATH.value())]
    files = [p for root in roots for p in root.rglob("*") if p.is_file()]
    assert any(p.name == "manifest.json" for p in files) and any(p.suffix == ".sqlite" for p in files)
    for path in files:
        places[str(path)] = path.read_bytes().decode("latin-1")
    for where, text in places.items():
        for key in (ENV_KEY, BLOCK_KEY):
            assert key not in text, f"API key found in {where}"
