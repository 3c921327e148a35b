"""`mmedpo explain`: stage by stage hit or miss, and for a miss what changed."""

from __future__ import annotations

from flows.explain import explain
from tasks.assemble import assemble
from tasks.config import IngestConfig, RunConfig
from tasks.hallucinate import hallucinate
from tasks.ingest import ingest
from tasks.localize import localize
from tasks.noise import noise
from tasks.score import score
from tasks.store import ArtifactStore
from tests.support.raw_jsonl import append_records


def curate_by_hand(config: RunConfig) -> None:
    store = ArtifactStore(config.store)
    samples = ingest(store, config.ingest)
    regions = localize(store, config.localize, samples)
    noised = noise(store, config.noise, samples, regions)
    rejected = hallucinate(store, config.hallucinate, samples)
    scored = score(store, config.score, samples, rejected, regions)
    assemble(store, config.assemble, samples, regions, noised, rejected, scored)


def test_hits_then_a_changed_option_is_named_and_downstream_waits(tmp_path):
    config = RunConfig(
        name="e", store=tmp_path / "store", ingest=IngestConfig(sources=[append_records(tmp_path / "raw", 0, 3)])
    )
    before = {v.stage: v for v in explain(config)}
    assert before["ingest"].status == "miss" and before["ingest"].why == "never built in this store"
    assert before["localize"].status == "unknown" and "waits for ingest" in before["localize"].why

    curate_by_hand(config)
    after = {v.stage: v for v in explain(config)}
    curation = ("ingest", "localize", "noise", "hallucinate", "score", "assemble")
    assert [after[s].status for s in curation] == ["hit"] * 6
    assert after["train"].status == "miss" and after["train"].why == "never built in this store"

    stronger = config.model_copy(update={"noise": config.noise.model_copy(update={"k": 300})})
    changed = {v.stage: v for v in explain(stronger)}
    assert changed["localize"].status == "hit" and changed["noise"].status == "miss"
    assert "config k: 500 -> 300" in changed["noise"].why
    assert changed["assemble"].status == "unknown" and "noise" in changed["assemble"].why
