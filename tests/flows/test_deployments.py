"""prefect.yaml deployed to a real server that `make ui` started with a worker per work pool: the
pipeline deployment triggered through the API runs to its end with its artifacts, and the train
deployment runs on the gpu pool's worker."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from models.lifetime import free_port
from tasks.config import EvaluateConfig, IngestConfig, RunConfig, SourceConfig
from tests.support.configs import small_train

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT_S = 240  # server, pools and two workers on a loaded 2-core box
RUN_TIMEOUT_S = 900


def pools() -> list[str]:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    return sorted({d["work_pool"]["name"] for d in spec["deployments"]})


def test_prefect_yaml_declares_the_five_deployments():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert sorted(deployments) == ["curate", "evaluate", "iterate", "pipeline", "train"]
    assert deployments["train"]["work_pool"]["name"] == "gpu"
    (schedule,) = deployments["curate"]["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["active"] is False
    # `make ui` starts a worker for each of them.
    ui_pools = re.search(r"^UI_POOLS := (.*)$", (REPO / "Makefile").read_text(), re.MULTILINE).group(1).split()
    assert sorted(ui_pools) == pools() == ["gpu", "local"]


def processes_of(prefect_home: Path) -> list[int]:
    """Live processes started with this PREFECT_HOME (server, workers, flow runs of this test)."""
    marker = f"PREFECT_HOME={prefect_home}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                if "zombie" not in (entry / "status").read_text():
                    pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def pipeline_config(tmp_path: Path) -> RunConfig:
    raw = tmp_path / "incoming"
    raw.mkdir()
    lines = []
    for i, (split, answer) in enumerate([("train", "yes"), ("train", "no"), ("train", "yes"), ("test", "no")]):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40), dtype=np.uint8)).save(raw / f"{i}.png")
        record = {"id": f"q{i}", "image": f"{i}.png", "question": "Is there a lesion?", "answer": answer}
        lines.append(json.dumps({**record, "split": split, "boxes": [[5, 5, 25, 25]]}))
    (raw / "data.jsonl").write_text("\n".join(lines) + "\n")
    return RunConfig(
        name="deployed",
        store=tmp_path / "store",
        sets=tmp_path / "sets",
        ingest=IngestConfig(sources=[SourceConfig(format="jsonl", root=raw / "data.jsonl", name="incoming")]),
        train=small_train(),
        evaluate=EvaluateConfig(max_new_tokens=4, meteor=False, examples=1),
    )


@contextmanager
def make_ui(tmp_path: Path):
    """`make ui` on a free port with its own PREFECT_HOME; stopped as a user would (Ctrl-C, then
    `make ui-stop`), and whatever it started is gone afterwards."""
    home, port = tmp_path / "prefect-home", free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_WORKER_QUERY_SECONDS": "2",  # workers poll every 10 s by default
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
        # The server answers 500 now and then while two workers and this test poll it under a loaded
        # CI machine (SQLite contention); clients retry those as they retry 502/503.
        "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500",
    }
    # -o: the venv counts as installed (this interpreter's), make must not reinstall it.
    make = ["make", "-s", "-o", ".venv/.installed", f"BIN={BIN}", f"UI_PORT={port}", f"PREFECT_HOME={home}"]
    log = (tmp_path / "make-ui.log").open("w")
    ui = subprocess.Popen(
        [*make, "ui"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield api, env, ui
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGINT)  # Ctrl-C in make's terminal
            try:
                ui.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(ui.pid, signal.SIGKILL)
                ui.wait()
        subprocess.run([*make, "ui-stop"], cwd=REPO, env=env, capture_output=True, timeout=120)
        deadline = time.monotonic() + 60
        while processes_of(home) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = processes_of(home)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        tail = (tmp_path / "make-ui.log").read_text()[-3000:]
        assert not left, f"make ui / ui-stop left {len(left)} processes:\n{tail}"


def wait_final(client, flow_run_id, ui: subprocess.Popen, log: Path):
    import httpx

    deadline = time.monotonic() + RUN_TIMEOUT_S
    while True:
        try:
            run = client.read_flow_run(flow_run_id)
        except httpx.ConnectError as error:
            server = log.parent / "prefect-home" / "server.log"
            said = server.read_text()[-3000:] if server.is_file() else "(no server.log)"
            raise AssertionError(f"the server is gone ({error}); its log:\n{said}") from error
        if run.state.is_final():
            return run
        assert ui.poll() is None, f"make ui ended:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"flow run still {run.state.name}"
        time.sleep(1)


@pytest.mark.slow
def test_make_ui_workers_run_the_deployed_pipeline_and_train(tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterParentFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_RETRY_EXTRA_CODES, temporary_settings

    config = pipeline_config(tmp_path)
    parameters = {"config": json.loads(config.model_dump_json())}
    with (
        make_ui(tmp_path) as (api, env, ui),
        temporary_settings(
            {PREFECT_API_URL: api, PREFECT_CLIENT_RETRY_EXTRA_CODES: env["PREFECT_CLIENT_RETRY_EXTRA_CODES"]}
        ),
    ):
        log = tmp_path / "make-ui.log"
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert ui.poll() is None, f"make ui ended:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"no worker on every pool:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{api}/health", timeout=5):
                    pass
                with get_client(sync_client=True) as client:
                    if all(client.read_workers_for_work_pool(pool) for pool in pools()):
                        break
            except Exception:  # noqa: BLE001 - server or pools not there yet
                pass
            time.sleep(1)
        # Workers import the checkout, so must the deployments; relative paths: the repository root.
        deploy = subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", "deploy", "--all"],
            cwd=REPO,
            env=env | {"PYTHONPATH": str(REPO)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]

        with get_client(sync_client=True) as client:
            for name, pool in (
                ("curate/curate", "local"),
                ("train/train", "gpu"),
                ("evaluate-keys/evaluate", "local"),
                ("pipeline/pipeline", "local"),
                ("iterate/iterate", "local"),
            ):
                assert client.read_deployment_by_name(name).work_pool_name == pool
            assert [s.active for s in client.read_deployment_by_name("curate/curate").schedules] == [False]

            pipeline = run_deployment("pipeline/pipeline", parameters=parameters, timeout=0)
            pipeline = wait_final(client, pipeline.id, ui, log)
            assert pipeline.state.is_completed(), pipeline.state
            children = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[pipeline.id]))
            )
            assert sorted(run.name for run in children) == ["curate-deployed", "evaluate-deployed", "train-deployed"]
            artifacts = client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[pipeline.id, *(run.id for run in children)]))
            )
            by_key = {a.key: a for a in artifacts if a.key}
            for stage in ("localize", "noise", "hallucinate", "score"):
                assert by_key[f"{stage}-progress"].data == 100.0
            assert by_key["noise-grid"].type == "image" and by_key["localize-regions"].type == "table"
            assert by_key["assemble-card"].type == "markdown" and "train" in by_key["train-manifest"].data
            assert by_key["evaluate-comparison"].type == "table"

            # The train deployment goes to the gpu pool: only its worker can run it. The same set and config:
            # the pipeline's adapter is reused.
            train = run_deployment("train/train", parameters=parameters | {"preferences": "deployed"}, timeout=0)
            train = wait_final(client, train.id, ui, log)
            assert train.state.is_completed(), train.state
            assert train.work_pool_name == "gpu"
    sets = [p for p in (tmp_path / "sets" / "deployed").iterdir() if p.is_dir()]
    assert len(sets) == 1 and (sets[0] / "CARD.md").is_file()
