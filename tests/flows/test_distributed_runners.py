"""The same curation flow with its shards on a Dask cluster of 2 worker processes and on a local
Ray cluster of 2 CPUs: the same set version, pairs and work as the thread runner, one task run per
shard reported to the server by the workers."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.curate import curate
from tasks.config import IngestConfig, RunConfig, RunnerConfig
from tasks.runners import make_task_runner
from tests.support.harness import task_run_names
from tests.support.raw_jsonl import append_records

PER_SAMPLE = ("localize", "noise", "hallucinate", "score")
# The curate flow's own task runs: its six stages and publish-set.
FLOW_TASKS = ("ingest", *PER_SAMPLE, "assemble", "publish-set")
REPO = Path(__file__).resolve().parents[2]


def pairs(manifest) -> list[dict]:
    files = sorted(f for f in manifest.files if f.startswith("data/"))  # the set's pairs folder (catalog.PAIRS)
    return [row for f in files for row in pq.read_table(manifest.file(f)).to_pylist()]


def curate_on_threads_and(tmp_path, kind: str) -> None:
    source = append_records(tmp_path / "raw", 0, 4)

    def config(name: str, runner: RunnerConfig) -> RunConfig:
        return RunConfig(
            name="scale",
            store=tmp_path / name,
            sets=tmp_path / f"{name}-sets",
            ingest=IngestConfig(sources=[source]),
            runner=runner,
        )

    threads = curate(config("threads", RunnerConfig(kind="threads", workers=2, shard_size=4)))
    state = curate(config(kind, RunnerConfig(kind=kind, workers=2, shard_size=1)), return_state=True)
    other = state.result()

    assert other["assemble"].digest == threads["assemble"].digest and other["assemble"].key == threads["assemble"].key
    assert pairs(other["assemble"]) == pairs(threads["assemble"])
    for stage in PER_SAMPLE:
        assert other[stage].work == {"computed": 4, "reused": 0}
    # One shard per sample (and per image check), each a task run a worker reported to the server;
    # waits until the flow's own task runs are there too (they arrive as events).
    expected = sorted(f"{stage}-shard-{i}" for stage in ("ingest", *PER_SAMPLE) for i in range(4))
    names = task_run_names(state.state_details.flow_run_id, at_least=len(expected) + len(FLOW_TASKS))
    assert [name for name in names if "-shard-" in name] == expected
    assert sorted(name.rsplit("-", 1)[0] for name in names if "-shard-" not in name) == sorted(FLOW_TASKS)


@pytest.mark.slow
def test_dask_gives_the_set_version_of_the_thread_runner(tmp_path, prefect_harness):
    curate_on_threads_and(tmp_path, "dask")


@pytest.mark.slow
def test_ray_gives_the_set_version_of_the_thread_runner(tmp_path, prefect_harness, monkeypatch):
    ray = pytest.importorskip("ray", reason="runner.kind=ray needs the [ray] extra (make test installs it)")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    curate_on_threads_and(tmp_path, "ray")
    assert not ray.is_initialized()  # the runner shut down the cluster it started
    # Its workers import this checkout (a git worktree's, not the installed main checkout's).
    runtime_env = make_task_runner(RunnerConfig(kind="ray", workers=2)).init_kwargs["runtime_env"]
    assert runtime_env["env_vars"]["PYTHONPATH"].split(os.pathsep)[0] == str(REPO)
