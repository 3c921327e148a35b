"""Identity is content: touched or freshly copied sources are cache hits, changed bytes recompute
only what uses them, a stage rebuilt to the same bytes leaves everything downstream cached, and
a model file is known by its bytes, not its name."""

from __future__ import annotations

import os
import shutil

import pytest
from PIL import Image

from flows.curate import curate
from tasks.config import IngestConfig, LocalizeConfig, RunConfig, SamConfig
from tasks.store import ArtifactStore
from tests.support.harness import task_states
from tests.support.raw_jsonl import append_records


def config_for(tmp_path, source) -> RunConfig:
    return RunConfig(
        name="ident", store=tmp_path / "store", sets=tmp_path / "sets", ingest=IngestConfig(sources=[source])
    )


@pytest.mark.slow
def test_touched_and_recopied_sources_are_hits_and_one_changed_image_recomputes_its_items(tmp_path, prefect_harness):
    raw = tmp_path / "raw"
    config = config_for(tmp_path, append_records(raw, 0, 4))
    first = curate(config)
    version = first["assemble"].digest

    for path in raw.iterdir():  # a sync that rewrites times: every file touched
        os.utime(path, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    touched = curate(config, return_state=True)
    assert {stage: m.key for stage, m in touched.result().items()} == {stage: m.key for stage, m in first.items()}
    states = task_states(touched.state_details.flow_run_id)
    assert {states[stage] for stage in first} == {"Cached"}

    copy = tmp_path / "copy"
    shutil.copytree(raw, copy)  # the same bytes written afresh: new times and inodes
    shutil.rmtree(raw)
    copy.rename(raw)
    recopied = curate(config)
    assert recopied["ingest"].key == first["ingest"].key and recopied["assemble"].digest == version
    published = config.sets / "ident"
    assert sorted(p.name for p in published.iterdir() if p.is_dir()) == [version]  # no new set version
    assert (published / "LATEST").read_text().strip() == version

    pixels = raw / "img2.png"
    before = pixels.read_bytes()
    image = Image.open(pixels)
    image.putpixel((40, 40), (image.getpixel((40, 40)) + 128) % 256)
    image.save(pixels)
    assert pixels.read_bytes() != before
    changed = curate(config)
    assert changed["ingest"].key != first["ingest"].key
    for stage in ("localize", "noise", "hallucinate"):  # the image's own sample, nothing else
        assert changed[stage].work == {"computed": 1, "reused": 3}, stage
    assert changed["score"].work == {"computed": 0, "reused": 4}  # judges read the texts only
    assert changed["assemble"].digest != version


def test_a_stage_rebuilt_to_the_same_bytes_leaves_downstream_cached(tmp_path, monkeypatch):
    import tasks.localize as localize_stage
    from tasks.ingest import ingest
    from tasks.noise import noise

    config = config_for(tmp_path, append_records(tmp_path / "raw", 0, 3))
    store = ArtifactStore(config.store)
    samples = ingest(store, config.ingest)
    regions = localize_stage.localize(store, config.localize, samples)
    noised = noise(store, config.noise, samples, regions)

    monkeypatch.setattr(localize_stage, "CODE", "an-edited-localizer")  # new code, same output
    rebuilt = localize_stage.localize(store, config.localize, samples)
    assert rebuilt.key != regions.key and rebuilt.created != regions.created
    assert rebuilt.digest == regions.digest
    assert noise(store, config.noise, samples, rebuilt) == noised  # the stored artifact: not rebuilt


def test_a_model_file_is_known_by_its_bytes_not_its_name(tmp_path):
    from tasks.localize import CODE, STAGE

    store = ArtifactStore(tmp_path / "store")
    checkpoint = tmp_path / "models" / "medsam_vit_b.pth"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights v1")

    def key(path) -> str:
        settings = LocalizeConfig(source="sam", sam=SamConfig(checkpoint=path))
        return store.key(STAGE, CODE, settings, {})[0]

    first = key(checkpoint)
    renamed = checkpoint.with_name("copy-of-medsam.pth")
    shutil.copy(checkpoint, renamed)
    assert key(renamed) == first  # a renamed copy is the same model
    plain = checkpoint.with_name("vit_b.pth")
    shutil.copy(checkpoint, plain)
    assert key(plain) != first  # ...unless the name chose another preprocessing (preprocess: auto)
    checkpoint.write_bytes(b"weights v2")  # new bytes under the same name
    assert key(checkpoint) != first
    settings = LocalizeConfig(source="sam", sam=SamConfig(checkpoint=checkpoint))
    _, inputs = store.key(STAGE, CODE, settings, {})
    assert set(inputs) == {"sam.checkpoint"}  # recorded as an input: lineage names it


def test_ingest_hashes_its_data_root_once_a_run(tmp_path, monkeypatch):
    from tasks.ingest import ingest
    from tasks.store.keys import DigestMemo

    config = config_for(tmp_path, append_records(tmp_path / "raw", 0, 3))
    store = ArtifactStore(config.store)
    walked, tree = [], DigestMemo.tree
    monkeypatch.setattr(DigestMemo, "tree", lambda memo, root: walked.append(root) or tree(memo, root))
    built = ingest(store, config.ingest)
    assert len(walked) == 1 and built.counts["samples.kept"] == 3
    assert ingest(store, config.ingest) == built and len(walked) == 2  # a hit: the key alone
