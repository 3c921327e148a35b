"""attention.refine: sam - the map's peak as SAM's point prompt, or the map's own region kept with the reason."""

from __future__ import annotations

import numpy as np
import pytest
from segment_anything import SamPredictor

from models import attention
from models.sam import to_rgb8
from tasks.config import ConfigError, LocalizeConfig, RunConfig, validate
from tasks.imaging import load_array
from tasks.localize import region_counts
from tasks.localize.localizers import make_localizer, refined
from tasks.localize.maps import map_peaks, smooth
from tasks.localize.regions import Region
from tests.support.sam import tiny_sam, tiny_sam_checkpoint
from tests.support.samples import sample_row, write_image


@pytest.fixture
def rows(tmp_path):
    rng = np.random.default_rng(3)
    shapes = [(48, 80), (64, 64, 3), (70, 40), (56, 56)]
    paths = [
        write_image(tmp_path / f"{i}.png", rng.integers(0, 255, shape, dtype=np.uint8))
        for i, shape in enumerate(shapes)
    ]
    return [sample_row(f"s{i}", path, dataset="vqa-rad") for i, path in enumerate(paths)]


def test_refined_regions_are_sams_mask_at_the_attention_peak_or_the_map_with_its_reason(rows, tiny_llava, tmp_path):
    settings = dict(source="attention", min_area_fraction=0.0, max_area_fraction=1.0)
    sam = tiny_sam_checkpoint(tmp_path / "sam.pth", seed=6)  # a random SAM that holds some peaks, not all
    plain = make_localizer(LocalizeConfig(**settings, attention={"model_path": tiny_llava})).locate(rows)
    config = LocalizeConfig(**settings, attention={"model_path": tiny_llava, "refine": "sam"}, sam=sam)
    got = make_localizer(config).locate(rows)

    # What the refinement must be, from the map (through the tower: auto for LLaVA) and segment_anything's predictor.
    model = attention.load(tiny_llava)
    maps = attention.relevance_maps(
        model,
        [r["question"] for r in rows],
        [r["answer"] for r in rows],
        [r["image_path"] for r in rows],
        through_tower=True,
    )
    predictor = SamPredictor(tiny_sam(seed=6))
    sources = []
    for row, relevance, before, after in zip(rows, maps, plain, got):
        saliency = smooth(relevance, row["height"], row["width"], config.heatmap)
        y, x = map_peaks(saliency, relevance.shape, 1)[0]
        predictor.set_image(to_rgb8(load_array(row["image_path"])))
        masks, scores, _ = predictor.predict(point_coords=np.array([[x, y]]), point_labels=np.array([1]))
        expected = masks[int(np.argmax(scores))]
        assert before.status == after.status == "ok"
        if expected.any() and expected[y, x]:
            assert after.source == "attention+sam" and after.reason is None
            assert np.array_equal(after.mask, expected) and after.mask[y, x]
            assert after.confidence == pytest.approx(float(np.clip(scores.max(), 0, 1)), abs=1e-5)
        else:
            assert after.source == "attention" and after.reason.startswith("sam_fallback_")
            assert np.array_equal(after.mask, before.mask)
        sources.append(after.source)
    assert {"attention+sam", "attention"} <= set(sources)  # both ways were taken


def test_every_fallback_keeps_the_attention_region_and_names_why():
    mask = np.zeros((6, 6), dtype=bool)
    mask[1:3, 1:3] = True
    region = Region("ok", mask=mask, boxes=[[1, 1, 3, 3]], confidence=0.4)
    elsewhere = np.zeros((6, 6), dtype=bool)
    elsewhere[4:, 4:] = True
    cases = {
        "sam_fallback_sam_error": Region("failed", "sam_error"),
        "sam_fallback_empty_mask": Region("ok", mask=np.zeros((6, 6), dtype=bool), confidence=0.9),
        "sam_fallback_peak_outside_mask": Region("ok", mask=elsewhere, confidence=0.9),
    }
    for reason, by_sam in cases.items():
        kept = refined(region, by_sam, (1, 1))
        assert kept.reason == reason and kept.mask is mask and kept.confidence == 0.4
    taken = refined(region, Region("ok", mask=elsewhere, confidence=0.9), (5, 5))
    assert taken.source == "attention+sam" and taken.mask is elsewhere and taken.boxes == [[4.0, 4.0, 6.0, 6.0]]
    records = [
        {"sample_id": "a", "status": "ok", "reason": "sam_fallback_peak_outside_mask", "source": "attention"},
        {"sample_id": "b", "status": "ok", "reason": None, "source": "attention+sam"},
    ]
    counts = region_counts(records, ["vqa-rad", "vqa-rad"])
    assert counts["regions.ok"] == 2 and counts["regions.ok.sam_fallback_peak_outside_mask"] == 1
    assert counts["regions[vqa-rad].ok.by_attention_sam"] == 1 and counts["regions[vqa-rad].ok.by_attention"] == 1


def test_refining_with_sam_needs_sam_weights(tiny_llava):
    with pytest.raises(ConfigError, match="refine: sam needs localize.sam.checkpoint"):
        validate({"model": str(tiny_llava), "localize": {"attention": {"refine": "sam"}}}, RunConfig, "run.yaml")
    assert LocalizeConfig(attention={"model_path": tiny_llava}).attention.refine == "none"
