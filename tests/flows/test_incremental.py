"""Incremental re-curation under a real Prefect server: new records cost only their own work."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

from flows.curate import curate
from tasks.config import IngestConfig, RunConfig, RunnerConfig
from tasks.sets import list_sets, load_pairs
from tests.support.harness import task_run_names
from tests.support.raw_jsonl import append_records

PER_SAMPLE = ("localize", "noise", "hallucinate", "score")


@pytest.mark.slow
def test_three_new_records_are_the_only_items_computed(tmp_path, prefect_harness):
    raw = tmp_path / "raw"
    source = append_records(raw, 0, 5)
    config = RunConfig(
        name="grow",
        store=tmp_path / "store",
        sets=tmp_path / "sets",
        ingest=IngestConfig(sources=[source]),
        runner=RunnerConfig(workers=2, shard_size=2),
    )
    first = curate(config)
    assert {stage: first[stage].work for stage in PER_SAMPLE} == {
        stage: {"computed": 5, "reused": 0} for stage in PER_SAMPLE
    }

    append_records(raw, 5, 3)
    state = curate(config, return_state=True)
    second = state.result()
    assert second["ingest"].counts["samples.kept"] == 8
    assert {stage: second[stage].work for stage in PER_SAMPLE} == {
        stage: {"computed": 3, "reused": 5} for stage in PER_SAMPLE
    }
    # Ingestion re-reads the records but decodes only the 3 new images.
    assert (first["ingest"].work, second["ingest"].work) == ({"computed": 5, "reused": 0}, {"computed": 3, "reused": 5})
    # 3 new samples in shards of 2: two shard task runs per per-sample stage (and for the image checks).
    shards = [name for name in task_run_names(state.state_details.flow_run_id) if "-shard-" in name]
    assert shards == sorted(f"{stage}-shard-{i}" for stage in ("ingest", *PER_SAMPLE) for i in (0, 1))
    assert second["assemble"].key != first["assemble"].key
    assert second["assemble"].counts["pairs.built"] == 16  # a text and a visual pair per sample
    assert [Path(m.path).name for m in list_sets(config.sets)] == [first["assemble"].digest, second["assemble"].digest]
    # The new version links the data-root images the first one holds (no copy of the data root again).
    old, new = (Path(m.path) for m in list_sets(config.sets))
    chosen = {Path(p).name for p in load_pairs(new).column("chosen_image").to_pylist()}
    kept = {name for name in chosen if (old / "images" / name).is_file()}
    assert len(kept) == 5 and len(chosen) == 8
    assert all((new / "images" / name).stat().st_ino == (old / "images" / name).stat().st_ino for name in kept)
    # Each stage's task run still names its upstream stages' runs (the UI's graph), though Prefect
    # no longer walks the manifests it is given.
    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    names = {run.id: run.name.rsplit("-", 1)[0] for run in runs}
    graph = {
        names[run.id]: {name: [names[i.id] for i in given] for name, given in run.task_inputs.items() if given}
        for run in runs
        if names[run.id] in ("assemble", "publish-set")
    }
    upstream = ("ingest", "localize", "noise", "hallucinate", "score")
    assert graph == {"assemble": {name: [name] for name in upstream}, "publish-set": {"manifest": ["assemble"]}}

    # Gathered from cached items, the new artifact equals one built from scratch.
    fresh = curate(config.model_copy(update={"store": tmp_path / "fresh", "sets": tmp_path / "fresh-sets"}))
    for stage in PER_SAMPLE:
        assert fresh[stage].key == second[stage].key and fresh[stage].counts == second[stage].counts
    assert fresh["assemble"].key == second["assemble"].key
