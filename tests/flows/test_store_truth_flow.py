"""Under a real Prefect server, Prefect's cache records are a hint: a deleted store, a damaged
artifact or an empty curation never reaches a published set through them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from flows.curate import curate
from tasks import catalog
from tasks.config import IngestConfig, RunConfig, SourceConfig
from tasks.counters import NothingKept
from tasks.sets import LATEST
from tests.flows.test_curate_cache import small_source
from tests.support.harness import task_states

STAGES = ("ingest", "localize", "noise", "hallucinate", "score", "assemble")


def small_run(tmp_path: Path) -> RunConfig:
    sources = [small_source(tmp_path / "raw")]
    return RunConfig(name="t", store=tmp_path / "store", sets=tmp_path / "sets", ingest=IngestConfig(sources=sources))


@pytest.mark.slow
def test_a_deleted_store_or_a_flipped_byte_is_recomputed_never_reused(tmp_path, prefect_harness):
    config = small_run(tmp_path)
    first = curate(config)
    # The store deleted (Prefect still holds records of every stage): everything is rebuilt and published.
    shutil.rmtree(config.store)
    state = curate(config, return_state=True)
    again = state.result()
    assert set(task_states(state.state_details.flow_run_id)[s] for s in STAGES) == {"Completed"}
    version = config.sets / "t" / again["assemble"].digest
    assert again["assemble"].digest == first["assemble"].digest and (version / "manifest.json").is_file()

    # One byte flipped in a cached noised image, shared by hard links with the published set.
    noised = catalog.rows(again["noise"], catalog.NOISED)
    image = Path(again["noise"].path) / next(r["noised_path"] for r in noised if r["status"] == "ok")
    pristine = image.read_bytes()
    with open(image, "r+b") as handle:
        handle.seek(len(pristine) // 2)
        handle.write(bytes([pristine[len(pristine) // 2] ^ 0xFF]))
    state = curate(config, return_state=True)
    third = state.result()
    states = task_states(state.state_details.flow_run_id)
    assert states["noise"] == "Completed" and states["ingest"] == "Cached"
    assert third["assemble"].digest == first["assemble"].digest
    published = {p.read_bytes() for p in (version / "images").iterdir()}
    assert pristine in published and all(len(b) > 0 for b in published)
    flipped = bytearray(pristine)
    flipped[len(pristine) // 2] ^= 0xFF
    assert bytes(flipped) not in published


@pytest.mark.slow
def test_a_curation_that_keeps_no_sample_fails_and_publishes_nothing(tmp_path, prefect_harness):
    good = small_run(tmp_path)
    curate(good)
    latest = (tmp_path / "sets" / "t" / LATEST).read_text()
    bad_root = tmp_path / "bad"
    bad_root.mkdir()
    (bad_root / "x.jsonl").write_text(json.dumps({"id": "1", "image": "gone.png", "question": "q?", "answer": "a"}))
    empty = good.model_copy(
        update={"ingest": IngestConfig(sources=[SourceConfig(format="jsonl", root=bad_root / "x.jsonl", name="bad")])}
    )
    with pytest.raises(NothingKept, match=r"ingest: 0 samples kept \(samples.rejected.missing_image 1\)"):
        curate(empty)
    assert (tmp_path / "sets" / "t" / LATEST).read_text() == latest
    assert len([p for p in (tmp_path / "sets" / "t").iterdir() if p.is_dir()]) == 1
