"""The grounding experiment's data set: the text prior it promises, lesions where the boxes say."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.grounding.config import GroundingDataConfig
from experiments.grounding.data import SIDE, WHERE, build_grounding_data, is_presence
from tasks import catalog
from tasks.config import IngestConfig, SourceConfig
from tasks.imaging import load_array
from tasks.ingest import ingest_to_file

CONFIG = GroundingDataConfig(n_train=160, n_val=8, n_test=160, image_size=48)


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("grounding")
    path = build_grounding_data(root, CONFIG)
    return root, [json.loads(line) for line in path.read_text().splitlines()]


def yes_share(rows: list[dict], split: str) -> float:
    closed = [r for r in rows if r["split"] == split and r["answer_type"] == "closed"]
    return sum(r["answer"] == "yes" for r in closed) / len(closed)


@pytest.mark.slow
def test_the_training_prior_is_flipped_in_the_test_split(records):
    _, rows = records
    assert [sum(r["split"] == s for r in rows) for s in ("train", "val", "test")] == [160, 8, 160]
    assert 0.65 < yes_share(rows, "train") < 0.85
    assert 0.15 < yes_share(rows, "test") < 0.35


def test_answers_follow_the_pasted_lesion(records):
    root, rows = records
    for row in rows:
        pixels = load_array(root / row["image"]).astype(float)
        assert pixels.shape == (48, 48)
        if not row["boxes"]:
            assert is_presence(row["question"]) and row["answer"] == "no"
            # Backgrounds are stretched into the grey range; only a lesion goes beyond it.
            assert pixels.min() >= CONFIG.background_range[0] - 1 and pixels.max() <= CONFIG.background_range[1] + 1
            continue
        x0, y0, x1, y1 = row["boxes"][0]
        centre_x = (x0 + x1) / 2
        inside = pixels[max(y0, 0) : y1, max(x0, 0) : x1]
        assert np.abs(inside - np.median(pixels)).max() > 60  # the blob stands out inside its box
        if is_presence(row["question"]):
            assert row["answer"] == "yes"
        elif row["question"] == SIDE:
            assert row["answer"] == ("yes" if centre_x < 24 else "no")
        else:
            assert row["question"] == WHERE
            assert (
                row["answer"]
                == f"Lesion in the {'upper' if (y0 + y1) / 2 < 24 else 'lower'} {'left' if centre_x < 24 else 'right'}."
            )


@pytest.mark.slow
def test_same_config_same_bytes_and_a_new_seed_changes_them(records, tmp_path):
    root, rows = records
    again = build_grounding_data(tmp_path / "again", CONFIG)
    assert again.read_text() == (root / "grounding.jsonl").read_text()
    first = rows[0]["image"]
    assert (tmp_path / "again" / first).read_bytes() == (root / first).read_bytes()
    other = build_grounding_data(tmp_path / "other", CONFIG.model_copy(update={"seed": 1}))
    assert other.read_text() != again.read_text()


def test_it_goes_through_ingestion_with_its_boxes(records, tmp_path):
    root, rows = records
    source = SourceConfig(format="jsonl", root=root / "grounding.jsonl", name="grounding")
    counts = ingest_to_file(source, IngestConfig(sources=[source]), tmp_path / "samples.parquet")
    assert counts["samples.kept"] == len(rows)
    samples = catalog.read_file(tmp_path / "samples.parquet", catalog.SAMPLES).to_pylist()
    with_boxes = {s["sample_id"].split(":")[-1]: s["boxes"] for s in samples if s["boxes"]}
    assert len(with_boxes) == sum(bool(r["boxes"]) for r in rows)
