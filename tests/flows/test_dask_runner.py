"""The same curation flow with its shards on a Dask cluster of 2 worker processes."""

from __future__ import annotations

import pyarrow.parquet as pq

from flows.curate import curate
from tasks.config import IngestConfig, RunConfig, RunnerConfig
from tests.support.harness import task_run_names
from tests.support.raw_jsonl import append_records

PER_SAMPLE = ("localize", "noise", "hallucinate", "score")
# The curate flow's own task runs: its six stages and publish-set.
FLOW_TASKS = ("ingest", *PER_SAMPLE, "assemble", "publish-set")


def pairs(manifest) -> list[dict]:
    files = sorted(f for f in manifest.files if f.startswith("data/"))  # the set's pairs folder (catalog.PAIRS)
    return [row for f in files for row in pq.read_table(manifest.file(f)).to_pylist()]


def test_dask_gives_the_set_version_of_the_thread_runner(tmp_path, prefect_harness):
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
    state = curate(config("dask", RunnerConfig(kind="dask", workers=2, shard_size=1)), return_state=True)
    dask = state.result()

    assert dask["assemble"].key == threads["assemble"].key
    assert pairs(dask["assemble"]) == pairs(threads["assemble"])
    for stage in PER_SAMPLE:
        assert dask[stage].work == {"computed": 4, "reused": 0}
    # One shard per sample (and per image check), each a task run the Dask workers reported to the server.
    expected = sorted(f"{stage}-shard-{i}" for stage in ("ingest", *PER_SAMPLE) for i in range(4))
    # Waits until the flow's own task runs are there too (a count too high waits out task_run_names' 60 s).
    names = task_run_names(state.state_details.flow_run_id, at_least=len(expected) + len(FLOW_TASKS))
    assert [name for name in names if "-shard-" in name] == expected
    assert sorted(name.rsplit("-", 1)[0] for name in names if "-shard-" not in name) == sorted(FLOW_TASKS)
