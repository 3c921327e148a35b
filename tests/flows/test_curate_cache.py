"""The curation flow under a real Prefect server: unchanged re-runs compute nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from flows.curate import curate
from tasks.config import IngestConfig, NormalizerConfig, RunConfig, SourceConfig
from tests.support.harness import task_states


def small_source(root: Path) -> SourceConfig:
    root.mkdir(parents=True)
    lines = []
    for i in range(3):
        Image.new("L", (48, 48), 40 * i).save(root / f"img{i}.png")
        lines.append(
            json.dumps(
                {
                    "id": f"s{i}",
                    "image": f"img{i}.png",
                    "question": "Is there a lesion?",
                    "answer": "yes",
                    "boxes": [[4, 4, 20, 20]],
                }
            )
        )
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return SourceConfig(format="jsonl", root=root / "data.jsonl", name="small")


def stored_dirs(store: Path) -> set[str]:
    """Stage folders' entries; the store-wide blob folder (.blobs) is no stage."""
    return {str(p.relative_to(store)) for p in store.glob("[!.]*/*")}


def new_dirs(store: Path, before: set[str]) -> set[str]:
    return {d.split("/")[0] for d in stored_dirs(store) - before}


@pytest.mark.slow
def test_rerun_hits_every_key_and_a_change_recomputes_only_downstream(tmp_path, prefect_harness):
    config = RunConfig(
        name="t",
        store=tmp_path / "store",
        sets=tmp_path / "sets",
        ingest=IngestConfig(sources=[small_source(tmp_path / "raw")]),
    )

    first = curate(config)
    dirs = stored_dirs(config.store)
    assert first["ingest"].counts["samples.kept"] == 3 and first["assemble"].counts["pairs.built"] > 0

    second_state = curate(config, return_state=True)
    second = second_state.result()
    assert {k: m.key for k, m in second.items()} == {k: m.key for k, m in first.items()}
    assert stored_dirs(config.store) == dirs  # nothing new was written
    assert {k: m.created for k, m in second.items()} == {k: m.created for k, m in first.items()}
    states = task_states(second_state.state_details.flow_run_id)
    assert {states[s] for s in ("ingest", "localize", "noise", "hallucinate", "score", "assemble")} == {"Cached"}

    # A debate change that scores every pair the same (one rules judge agrees with itself in any
    # number of rounds): scoring reruns, its output is identical, assembly stays cached.
    judged = config.model_copy(update={"score": config.score.model_copy(update={"max_rounds": 3})})
    before = stored_dirs(config.store)
    third = curate(judged)
    assert new_dirs(config.store, before) == {"score"}
    assert third["score"].digest == first["score"].digest and third["assemble"].key == first["assemble"].key
    assert all(third[s].key == first[s].key for s in ("ingest", "localize", "noise", "hallucinate"))

    # A weighting change: scoring and assembly only; every upstream key stays.
    weighted = config.model_copy(
        update={"score": config.score.model_copy(update={"normalizer": NormalizerConfig(kind="paper")})}
    )
    before = stored_dirs(config.store)
    fourth = curate(weighted)
    assert new_dirs(config.store, before) == {"score", "assemble"}
    assert all(fourth[s].key == first[s].key for s in ("ingest", "localize", "noise", "hallucinate"))

    # A noising change: noise and assembly only (scores do not depend on the noised pixels).
    noised = config.model_copy(update={"noise": config.noise.model_copy(update={"k": 300})})
    before = stored_dirs(config.store)
    curate(noised)
    assert new_dirs(config.store, before) == {"noise", "assemble"}

    # An ingestion option that keeps every sample as it was: ingestion reruns and comes out
    # byte-identical, so nothing downstream recomputes (early cutoff).
    changed = config.model_copy(update={"ingest": config.ingest.model_copy(update={"min_image_side": 8})})
    before = stored_dirs(config.store)
    fifth = curate(changed)
    assert new_dirs(config.store, before) == {"ingest"}
    assert fifth["ingest"].key != first["ingest"].key and fifth["ingest"].digest == first["ingest"].digest
    assert all(fifth[s].key == first[s].key for s in ("localize", "noise", "hallucinate", "score", "assemble"))
