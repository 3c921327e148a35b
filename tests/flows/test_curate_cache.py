"""The curation flow under a real Prefect server: unchanged re-runs compute nothing."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from flows.curate import curate
from tasks.config import IngestConfig, RunConfig, SourceConfig
from tests.flows.conftest import task_states


def small_source(root: Path) -> SourceConfig:
    root.mkdir(parents=True)
    lines = []
    for i in range(3):
        Image.new("L", (48, 48), 40 * i).save(root / f"img{i}.png")
        lines.append(json.dumps({"id": f"s{i}", "image": f"img{i}.png", "question": "Is there a lesion?", "answer": "yes", "boxes": [[4, 4, 20, 20]]}))
    (root / "data.jsonl").write_text("\n".join(lines) + "\n")
    return SourceConfig(format="jsonl", root=root / "data.jsonl", name="small")


def stored_dirs(store: Path) -> set[str]:
    return {str(p.relative_to(store)) for p in store.glob("*/*")}


def test_rerun_hits_every_key_and_an_option_recomputes_only_ingest(tmp_path, prefect_harness):
    config = RunConfig(name="t", store=tmp_path / "store", ingest=IngestConfig(sources=[small_source(tmp_path / "raw")]))

    first_state = curate(config, return_state=True)
    first = first_state.result()
    dirs = stored_dirs(config.store)
    assert first["ingest"].counts["kept"] == 3

    second_state = curate(config, return_state=True)
    second = second_state.result()
    assert {k: m.key for k, m in second.items()} == {k: m.key for k, m in first.items()}
    assert stored_dirs(config.store) == dirs  # nothing new was written
    assert {k: m.created for k, m in second.items()} == {k: m.created for k, m in first.items()}
    states = task_states(second_state.state_details.flow_run_id)
    assert states["ingest"] == "Cached"

    changed = config.model_copy(update={"ingest": config.ingest.model_copy(update={"min_image_side": 8})})
    third = curate(changed)
    assert third["ingest"].key != first["ingest"].key
    assert third["ingest"].inputs == first["ingest"].inputs  # the raw-data fingerprint did not change
    # Downstream keys follow the new ingest key, but every sample's content is unchanged:
    # the per-sample stages reuse all their cached items and compute none.
    assert third["localize"].key != first["localize"].key
    for stage in ("localize", "noise", "hallucinate", "score"):
        assert third[stage].work == {"computed": 0, "reused": 3}, stage
