"""prefect.yaml deployed to a real server, the curate deployment triggered and run by a process worker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.support.raw_jsonl import append_records

REPO = Path(__file__).resolve().parents[2]


def prefect_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    from prefect.settings import get_current_settings

    env = {
        **os.environ,
        "PREFECT_API_URL": str(get_current_settings().api.url),
        # The flow run must import this checkout, not whichever copy is installed.
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "prefect", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_prefect_yaml_declares_the_five_deployments():
    from flows.iterate import check_iterate
    from tasks.config import RunConfig

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert sorted(deployments) == ["curate", "evaluate", "iterate", "pipeline", "train"]
    iterate = deployments["iterate"]["parameters"]
    check_iterate(RunConfig.model_validate(iterate["config"]))  # a run file iterate accepts
    assert (
        iterate["rounds"] == 2
        and iterate["config"]["ingest"] == deployments["curate"]["parameters"]["config"]["ingest"]
    )
    assert deployments["train"]["work_pool"]["name"] == "gpu"
    (schedule,) = deployments["curate"]["schedules"]
    assert schedule["cron"] == "0 2 * * *" and schedule["active"] is False


def test_curate_deployment_runs_on_a_worker_and_publishes_artifacts(tmp_path, prefect_harness):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment

    with get_client(sync_client=True) as client:
        for pool in ("local", "gpu"):
            client.create_work_pool(WorkPoolCreate(name=pool, type="process"), overwrite=True)
    prefect_cli("--no-prompt", "deploy", "--all")

    with get_client(sync_client=True) as client:
        for name, pool in (
            ("train/train", "gpu"),
            ("evaluate-keys/evaluate", "local"),
            ("pipeline/pipeline", "local"),
            ("iterate/iterate", "local"),
        ):
            assert client.read_deployment_by_name(name).work_pool_name == pool
        deployment = client.read_deployment_by_name("curate/curate")
        assert deployment.work_pool_name == "local"
        assert [s.active for s in deployment.schedules] == [False]  # nightly, off until switched on

    source = append_records(tmp_path / "incoming", 0, 3)
    config = {
        "name": "deployed",
        "store": str(tmp_path / "store"),
        "sets": str(tmp_path / "sets"),
        "ingest": {"sources": [{"format": "jsonl", "root": str(source.root), "name": "incoming"}]},
    }
    flow_run = run_deployment("curate/curate", parameters={"config": config}, timeout=0)
    prefect_cli("worker", "start", "--pool", "local", "--type", "process", "--run-once")

    with get_client(sync_client=True) as client:
        finished = client.read_flow_run(flow_run.id)
        assert finished.state.is_completed(), finished.state
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
    by_key = {a.key: a for a in artifacts if a.key}
    for stage in ("localize", "noise", "hallucinate", "score"):
        assert by_key[f"{stage}-progress"].type == "progress" and by_key[f"{stage}-progress"].data == 100.0
    assert by_key["localize-regions"].type == "table" and by_key["noise-grid"].type == "image"
    assert "assemble" in by_key["assemble-manifest"].data
    sets = list((tmp_path / "sets" / "deployed").iterdir())
    assert len(sets) == 1 and (sets[0] / "CARD.md").is_file()
