"""The grounding experiment's data set: no intensity cue, a lesion and a same-area distractor in opposite
halves, the flipped prior, twins whose answers flip or stay, the sham's boxes on the distractor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from experiments.grounding.config import GroundingDataConfig
from experiments.grounding.data import (
    CLEAN,
    MIRROR,
    QUADRANT,
    SFT,
    SHAM,
    SIDE,
    Scene,
    build_grounding_data,
    disc,
    ellipse,
    make_scene,
)
from tasks import catalog
from tasks.config import IngestConfig, SourceConfig
from tasks.imaging import load_array
from tasks.ingest import ingest_to_file

CONFIG = GroundingDataConfig(n_train=120, n_val=4, n_test=60, n_sft=8)
SIZE = CONFIG.image_size


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    root = tmp_path_factory.mktemp("grounding")
    path = build_grounding_data(root, CONFIG)
    return root, [json.loads(line) for line in path.read_text().splitlines()]


def textured(seed: int) -> list[tuple[str, np.ndarray]]:
    """A background source with both smooth structure and noise (no file needed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:200, 0:200]
    return [("texture", 120 + 60 * np.sin(xx / 13.0) * np.cos(yy / 17.0) + rng.normal(0, 20, (200, 200)))]


def test_no_pixel_of_lesion_or_distractor_leaves_the_backgrounds_range_and_areas_match():
    rng = np.random.default_rng(0)
    low, high = CONFIG.background_range
    for index in range(40):
        left, upper = index % 2 == 0, index % 4 < 2
        scene = make_scene(rng, textured(index), CONFIG, left, upper)
        # The background itself spans the whole range: nothing inside it is an extreme by construction.
        assert scene.background.min() == low and scene.background.max() == high
        for image in (scene.render(), scene.render(mirror=True), scene.render(distractor=False)):
            assert image.min() >= low and image.max() <= high
        lesion = disc(SIZE, scene.lesion, scene.radius) > 0.5
        distractor = ellipse(SIZE, scene.distractor, scene.radius, 3.0, scene.angle) > 0.5
        assert lesion.mean() <= 0.15
        assert abs(distractor.sum() - lesion.sum()) <= 0.2 * lesion.sum()
        # Lesion wholly in its half, centred in its quadrant; the distractor wholly in the other half.
        columns = np.flatnonzero(lesion.any(axis=0))
        other = np.flatnonzero(distractor.any(axis=0))
        if left:
            assert columns.max() < SIZE / 2 <= other.min()
        else:
            assert other.max() < SIZE / 2 <= columns.min()
        assert (scene.lesion[1] < SIZE / 2) == upper
        assert abs(abs(scene.lesion_delta) / (high - low) - 0.5) <= 0.1 + 1e-9


def test_the_relocation_twin_is_the_scene_mirrored_on_the_same_background():
    background = np.full((SIZE, SIZE), 128.0)
    scene = Scene(
        background=background,
        radius=5.0,
        lesion=(8.0, 9.0),
        distractor=(23.0, 18.0),
        angle=0.4,
        lesion_delta=60.0,
        distractor_delta=-70.0,
        grey=(40, 215),
        aspect=3.0,
    )
    # On a symmetric background the twin is exactly the original flipped left-right.
    np.testing.assert_array_equal(scene.render(mirror=True), np.fliplr(scene.render()))
    # The removal twin keeps the lesion's half and clears the distractor's.
    clean = scene.render(distractor=False)
    np.testing.assert_array_equal(clean[:, :10], scene.render()[:, :10])
    assert np.abs(clean[:, 20:].astype(int) - 128).max() <= 1
    assert np.abs(scene.render()[:, 20:].astype(int) - 128).max() > 50


def test_the_prior_flips_between_training_and_test(records):
    _, rows = records
    originals = [r for r in rows if r["question"] == SIDE and not r["id"].endswith((MIRROR, CLEAN))]
    share = {s: np.mean([r["answer"] == "yes" for r in originals if r["split"] == s]) for s in ("train", "test")}
    assert 0.62 < share["train"] < 0.88 and 0.12 < share["test"] < 0.4
    # Every image has a lesion and both questions; only val and test images have twins.
    assert sum(r["split"] == "train" for r in rows) == 2 * 120
    assert sum(r["split"] == "test" for r in rows) == 4 * 60
    assert all(len(r["boxes"]) == 1 for r in rows)


def test_answers_and_boxes_follow_the_lesion_and_the_twins_flip_or_keep_them(records):
    root, rows = records
    by_id = {r["id"]: r for r in rows}
    for row in rows:
        x0, y0, x1, y1 = row["boxes"][0]
        centre_x, centre_y = (x0 + x1) / 2, (y0 + y1) / 2
        assert load_array(root / row["image"]).shape == (SIZE, SIZE)
        if row["question"] == SIDE:
            assert row["answer"] == ("yes" if centre_x < SIZE / 2 else "no")
        else:
            assert row["question"] == QUADRANT
            vertical, side = row["answer"].split()
            assert side == ("left" if centre_x < SIZE / 2 else "right")
            if abs(centre_y - SIZE / 2) > 1:  # whole-pixel boxes blur a centre right on the midline
                assert vertical == ("upper" if centre_y < SIZE / 2 else "lower")
        if row["id"].endswith(f"-{MIRROR}"):
            original = by_id[row["id"].rsplit("-", 1)[0]]
            assert row["answer"] != original["answer"]
            ox0, _, ox1, _ = original["boxes"][0]
            assert abs((x0 + x1) - (2 * SIZE - (ox0 + ox1))) <= 2  # the box moved to the mirror position
        if row["id"].endswith(f"-{CLEAN}"):
            assert row["answer"] == by_id[row["id"].rsplit("-", 1)[0]]["answer"]


def test_the_sham_file_boxes_a_same_size_region_on_the_distractor(records):
    root, rows = records
    sham = [json.loads(line) for line in (root / SHAM).read_text().splitlines()]
    training = [r for r in rows if r["split"] == "train"]
    assert [r["id"] for r in sham] == [r["id"] for r in training]
    for mine, theirs in zip(sham, training):
        assert {k: v for k, v in mine.items() if k != "boxes"} == {k: v for k, v in theirs.items() if k != "boxes"}
        (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = mine["boxes"][0], theirs["boxes"][0]
        assert abs((ax1 - ax0) - (bx1 - bx0)) <= 1 and abs((ay1 - ay0) - (by1 - by0)) <= 1
        # On the other side of the midline from the lesion.
        assert ((ax0 + ax1) / 2 < SIZE / 2) != ((bx0 + bx1) / 2 < SIZE / 2)


def test_the_sft_file_holds_new_training_images_and_leaves_the_others_as_they_were(records, tmp_path):
    root, rows = records
    sft = [json.loads(line) for line in (root / SFT).read_text().splitlines()]
    assert len(sft) == 2 * 8 and {r["split"] for r in sft} == {"train"}
    assert {r["question"] for r in sft} == {SIDE, QUADRANT}
    assert not {r["image"] for r in sft} & {r["image"] for r in rows}
    # More SFT images change no preference or evaluation image: they are drawn after them.
    more = build_grounding_data(tmp_path / "more", CONFIG.model_copy(update={"n_sft": 20}))
    assert more.read_text() == (root / "grounding.jsonl").read_text()
    assert len((tmp_path / "more" / SFT).read_text().splitlines()) == 2 * 20


def test_the_sft_images_follow_their_own_side_rate_not_the_training_prior(tmp_path):
    def yes_share(rate: float) -> float:
        config = CONFIG.model_copy(update={"n_train": 4, "n_test": 4, "n_sft": 200, "sft_left_rate": rate})
        build_grounding_data(tmp_path / str(rate), config)
        rows = [json.loads(line) for line in (tmp_path / str(rate) / SFT).read_text().splitlines()]
        return float(np.mean([r["answer"] == "yes" for r in rows if r["question"] == SIDE]))

    # The default: no side prior in the SFT (the preference pairs keep the 75% one).
    assert CONFIG.sft_left_rate == 0.5 and CONFIG.train_left_rate == 0.75
    assert 0.4 < yes_share(0.5) < 0.6
    assert yes_share(0.9) > 0.82


def test_same_config_same_bytes_and_it_goes_through_ingestion(records, tmp_path):
    root, rows = records
    again = build_grounding_data(tmp_path / "again", CONFIG)
    assert again.read_text() == (root / "grounding.jsonl").read_text()
    assert (tmp_path / "again" / rows[0]["image"]).read_bytes() == (root / rows[0]["image"]).read_bytes()
    source = SourceConfig(format="jsonl", root=root / "grounding.jsonl", name="grounding")
    counts = ingest_to_file(source, IngestConfig(sources=[source]), tmp_path / "samples.parquet")
    assert counts["samples.kept"] == len(rows)
    samples = catalog.read_file(tmp_path / "samples.parquet", catalog.SAMPLES).to_pylist()
    assert all(len(s["boxes"]) == 1 for s in samples)


def test_a_config_whose_range_is_inverted_is_refused():
    with pytest.raises(ValueError, match="background_range"):
        GroundingDataConfig(background_range=(200, 100))
