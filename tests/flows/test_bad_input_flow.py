"""The bad-input corpus through the curation flow: it completes, the rejects table names every
bad row, and the valid-but-unusual images (16-bit PNG, CMYK JPEG) become preference pairs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flows.curate import curate
from tasks.catalog import NOISED, REJECTS, SAMPLES, read_file
from tasks.config import IngestConfig, RunConfig, SourceConfig
from tasks.imaging import load_array
from tasks.sets import load_pairs
from tests.support.bad_inputs import SECRET, bad_corpus, expected_outcomes, kept_ids


@pytest.mark.slow
def test_curation_completes_on_the_bad_corpus_and_names_every_bad_row(tmp_path, prefect_harness):
    root = bad_corpus(tmp_path)
    config = RunConfig(
        name="bad",
        store=tmp_path / "store",
        sets=tmp_path / "sets",
        ingest=IngestConfig(sources=[SourceConfig(format="jsonl", root=root, name="bad")]),
    )
    state = curate(config, return_state=True)
    assert state.is_completed(), state
    manifests = state.result()

    rejects = read_file(manifests["ingest"].file("rejects.parquet"), REJECTS).to_pylist()
    expected = expected_outcomes()
    assert {r["source_ref"]: r["reason"] for r in rejects} == {
        ref: why for ref, why in expected.items() if why != "kept"
    }
    assert manifests["ingest"].counts["samples.kept"] == len(kept_ids()) == 3

    # 16-bit and CMYK inputs go all the way: a 16-bit image is windowed to 8 bits once, at ingest
    # (every consumer then sees the same pixels: no white image in training), and noised so.
    noised = {r["sample_id"]: r for r in read_file(manifests["noise"].file("noised.parquet"), NOISED).to_pylist()}
    assert {sid: r["status"] for sid, r in noised.items()} == {f"bad:train:{i}": "ok" for i in kept_ids()}
    noise_dir = Path(manifests["noise"].path)
    deep = load_array(noise_dir / noised["bad:train:gray16"]["noised_path"])
    samples = {r["sample_id"]: r for r in read_file(manifests["ingest"].file("samples.parquet"), SAMPLES).to_pylist()}
    original = load_array(samples["bad:train:gray16"]["image_path"])
    raw = load_array(root / "gray16.png")
    assert raw.dtype == np.uint16 and original.dtype == np.uint8 and original.shape == raw.shape
    assert len(np.unique(original)) > 100  # windowed over its range, not clipped to white
    assert deep.dtype == np.uint8 and deep.shape == original.shape
    assert not np.array_equal(deep[8:40, 8:40], original[8:40, 8:40])  # the lesion box was noised
    np.testing.assert_array_equal(deep[50:, 50:], original[50:, 50:])  # outside it, untouched
    colour = load_array(noise_dir / noised["bad:train:cmyk"]["noised_path"])
    assert colour.shape == (64, 64, 3)

    set_folder = config.sets / "bad" / manifests["assemble"].digest
    pairs = load_pairs(set_folder).to_pylist()
    assert {(p["sample_id"], p["pair_type"]) for p in pairs} == {
        (f"bad:train:{i}", kind) for i in kept_ids() for kind in ("text", "visual")
    }
    for pair in pairs:
        assert (set_folder / pair["chosen_image"]).is_file() and (set_folder / pair["rejected_image"]).is_file()

    # No byte of the files the symlinks point at reached the store or the set.
    for folder in (config.store, config.sets):
        for path in folder.rglob("*"):
            if path.is_file() and not path.is_symlink():
                assert SECRET not in path.read_bytes(), path
