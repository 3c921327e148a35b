import json

import numpy as np
import pytest
from segment_anything import SamPredictor

from models.sam import to_rgb8
from tasks import catalog, ui
from tasks.config import AnnotationConfig, HeatmapConfig, LocalizeConfig, SamConfig
from tasks.imaging import load_array
from tasks.localize import localize, region_grid, region_rows
from tasks.localize.maps import map_peaks, smooth
from tasks.localize.regions import HeatmapLocalizer, boxes_mask, clip_boxes
from tasks.store import ArtifactStore, safe_stem
from tasks.store.packed import is_blob_path
from tests.support.sam import tiny_sam, tiny_sam_checkpoint
from tests.support.samples import ingest_manifest, sample_row, write_image


def _regions(manifest):
    return {r["sample_id"]: r for r in catalog.rows(manifest, catalog.REGIONS)}


def _mask(manifest, row):
    return load_array(manifest.file(row["mask_path"])) > 0


def test_clip_boxes_drops_boxes_outside_the_image():
    assert clip_boxes([[-5, 2, 10, 8], [70, 0, 90, 10], [3, 3, 3.5, 9]], 64, 32) == [[0.0, 2.0, 10.0, 8.0]]
    assert clip_boxes([[10, 8, 2, 1]], 64, 32) == [[2.0, 1.0, 10.0, 8.0]]


def test_boxes_mask_covers_pixel_centres_and_grows_by_margin():
    mask = boxes_mask([[2, 1, 6, 3]], 8, 10)
    assert mask.sum() == 8 and mask[1:3, 2:6].all()
    assert boxes_mask([[2, 2, 6, 6]], 10, 10, margin=0.5)[0:8, 0:8].all()


@pytest.fixture
def annotated(tmp_path):
    rng = np.random.default_rng(0)
    image = write_image(tmp_path / "img.png", rng.integers(0, 256, (40, 50), dtype=np.uint8))
    label = np.zeros((40, 50, 3), dtype=np.uint8)
    label[5:15, 30:45] = (255, 0, 0)  # SLAKE colours each structure; any colour counts
    mask_png = write_image(tmp_path / "mask.png", label)
    rows = [
        sample_row("box", image, boxes=[[10, 20, 30, 30]]),
        sample_row("mask", image, mask_path=mask_png),
        sample_row("both", image, boxes=[[10, 20, 30, 30]], mask_path=mask_png),
        sample_row("none", image),
        sample_row("outside", image, boxes=[[60, 50, 80, 70]]),
        sample_row("tiny", image, boxes=[[0, 0, 1, 1]]),
        sample_row("lost", image, mask_path=tmp_path / "gone.png"),
    ]
    store = ArtifactStore(tmp_path / "store")
    return store, ingest_manifest(store, rows)


LESION_MASKS = LocalizeConfig(annotation=AnnotationConfig(mask_marks="lesions"))


def test_annotation_regions_from_boxes_and_masks(annotated):
    store, ingest = annotated
    manifest = localize(store, LESION_MASKS, ingest)
    rows = _regions(manifest)
    box = np.zeros((40, 50), dtype=bool)
    box[20:30, 10:30] = True
    lesion = np.zeros((40, 50), dtype=bool)
    lesion[5:15, 30:45] = True
    assert np.array_equal(_mask(manifest, rows["box"]), box)
    assert rows["box"]["boxes"] == [[10.0, 20.0, 30.0, 30.0]]
    assert rows["box"]["confidence"] == 1.0 and rows["box"]["area_fraction"] == pytest.approx(0.1)
    assert np.array_equal(_mask(manifest, rows["mask"]), lesion)
    assert rows["mask"]["boxes"] == [[30.0, 5.0, 45.0, 15.0]]
    assert np.array_equal(_mask(manifest, rows["both"]), lesion)  # prefer=mask
    # Masks are blobs of the store named by content: two samples with one lesion mask share one file.
    assert is_blob_path(rows["mask"]["mask_path"]) and rows["mask"]["mask_path"] == rows["both"]["mask_path"]
    assert {s: (rows[s]["status"], rows[s]["reason"]) for s in ("none", "outside", "tiny", "lost")} == {
        "none": ("no_region", "no_annotation"),
        "outside": ("no_region", "boxes_outside_image"),
        "tiny": ("no_region", "region_too_small"),
        "lost": ("failed", "missing_mask"),
    }
    assert rows["none"]["mask_path"] is None and rows["none"]["confidence"] is None
    assert {k: v for k, v in manifest.counts.items() if "[" not in k} == {
        "samples.seen": 7,
        "regions.ok": 3,
        "regions.no_region": 3,
        "regions.no_region.no_annotation": 1,
        "regions.no_region.boxes_outside_image": 1,
        "regions.no_region.region_too_small": 1,
        "regions.failed": 1,
        "regions.failed.missing_mask": 1,
    }
    # The same per data set: the ok ones by the source that found them.
    assert manifest.counts["regions[fixture].ok.by_annotation"] == 3
    assert manifest.counts["regions[fixture].no_region.no_annotation"] == 1


def test_an_organ_mask_is_no_lesion_region_by_default(annotated):
    store, ingest = annotated
    manifest = localize(store, LocalizeConfig(), ingest)
    rows = _regions(manifest)
    # SLAKE's mask.png colours organs with no legend: never a lesion region unless the config says so.
    assert (rows["mask"]["status"], rows["mask"]["reason"]) == ("no_region", "no_lesion_label")
    assert (rows["lost"]["status"], rows["lost"]["reason"]) == ("no_region", "no_lesion_label")  # never opened
    assert rows["both"]["boxes"] == [[10.0, 20.0, 30.0, 30.0]] and rows["both"]["area_fraction"] == pytest.approx(0.1)
    assert manifest.counts["regions.no_region.no_lesion_label"] == 2 and manifest.counts["regions.ok"] == 2


def test_annotation_preferences_and_confidence(annotated):
    store, ingest = annotated
    config = AnnotationConfig(mask_marks="lesions", prefer="union", confidence=0.8)
    union = _regions(localize(store, LocalizeConfig(annotation=config), ingest))
    assert union["both"]["area_fraction"] == pytest.approx((200 + 150) / 2000)
    assert union["both"]["confidence"] == pytest.approx(0.8)
    config = AnnotationConfig(mask_marks="lesions", prefer="boxes")
    boxes = _regions(localize(store, LocalizeConfig(annotation=config), ingest))
    assert boxes["both"]["boxes"] == [[10.0, 20.0, 30.0, 30.0]]
    assert boxes["mask"]["status"] == "ok"  # no boxes: falls back to the mask


def _blob(height, width, cy, cx, sigma):
    yy, xx = np.mgrid[0:height, 0:width]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2)).astype(np.float32)


@pytest.fixture
def heat(tmp_path):
    rng = np.random.default_rng(1)
    image = write_image(tmp_path / "img.png", rng.integers(0, 256, (64, 96), dtype=np.uint8))
    other = write_image(tmp_path / "other.png", rng.integers(0, 256, (64, 96), dtype=np.uint8))
    flat = write_image(tmp_path / "flat.png", rng.integers(0, 256, (64, 96), dtype=np.uint8))
    rows = [
        sample_row("by-image", image),
        sample_row("by-sample", other),
        sample_row("flat", flat),
        sample_row("missing", image, image_sha256="0" * 64),
    ]
    maps = tmp_path / "maps"
    maps.mkdir()
    # A 16x24 attention map (as a ViT gives), blob at map (4, 18) = image (16, 72).
    np.save(maps / f"{rows[0]['image_sha256']}.npy", _blob(16, 24, 4, 18, 2.0))
    write_image(maps / f"{safe_stem('by-sample')}.png", (_blob(64, 96, 40, 20, 6.0) * 255).astype(np.uint8))
    np.save(maps / f"{rows[2]['image_sha256']}.npy", np.full((8, 8), 0.3, dtype=np.float32))
    store = ArtifactStore(tmp_path / "store")
    return store, ingest_manifest(store, rows), maps


def test_heatmap_regions_follow_the_map(heat):
    store, ingest, maps = heat
    config = LocalizeConfig(
        source="heatmap", heatmap=HeatmapConfig(maps=maps, statistic="max_fraction", max_fraction=0.5)
    )
    manifest = localize(store, config, ingest)
    rows = _regions(manifest)
    first = _mask(manifest, rows["by-image"])
    assert first[17, 73] and not first[50, 10]
    ((x0, y0, x1, y1),) = rows["by-image"]["boxes"]
    assert x0 < 73 < x1 and y0 < 17 < y1
    second = _mask(manifest, rows["by-sample"])
    assert second[40, 20] and not second[10, 80]
    assert 0.5 < rows["by-image"]["confidence"] <= 1.0
    assert (rows["flat"]["status"], rows["flat"]["reason"]) == ("no_region", "flat_heatmap")
    assert (rows["missing"]["status"], rows["missing"]["reason"]) == ("no_region", "no_heatmap")
    assert rows["by-image"]["source"] == "heatmap"


def test_heatmap_statistics_and_confidence_sidecar(heat):
    store, ingest, maps = heat
    sha = _regions_sha(ingest)
    (maps / "confidences.json").write_text(json.dumps({sha: 0.42}))
    mean = _regions(localize(store, LocalizeConfig(source="heatmap", heatmap=HeatmapConfig(maps=maps)), ingest))
    top = _regions(
        localize(
            store,
            LocalizeConfig(source="heatmap", heatmap=HeatmapConfig(maps=maps, statistic="quantile", quantile=0.95)),
            ingest,
        )
    )
    assert mean["by-image"]["confidence"] == pytest.approx(0.42)
    assert top["by-image"]["area_fraction"] == pytest.approx(0.05, abs=0.01)
    assert mean["by-image"]["area_fraction"] > top["by-image"]["area_fraction"]


def test_heatmap_release_rule_is_a_15px_opencv_blur_cut_at_mean_minus_std(tmp_path):
    height, width = 40, 56
    yy, xx = np.mgrid[0:height, 0:width]
    raw = (xx / width + 2 * _blob(height, width, 12, 40, 3.0)).astype(np.float32)  # a ramp under a hot spot
    maps = tmp_path / "maps"
    maps.mkdir()
    image = write_image(tmp_path / "img.png", np.zeros((height, width), dtype=np.uint8))
    row = sample_row("s", image)
    np.save(maps / f"{row['image_sha256']}.npy", raw)
    release = HeatmapLocalizer(HeatmapConfig(maps=maps, blur_kernel_px=15, statistic="mean_minus_std"))
    region = release.locate_one(row)

    # OpenCV's GaussianBlur((15, 15), 0) by hand: sigma 0.3 * (7 - 1) + 0.8 = 2.6, 15 normalized taps,
    # BORDER_REFLECT_101 edges (numpy's "reflect"), rows then columns.
    taps = np.exp(-((np.arange(15) - 7) ** 2) / (2 * 2.6**2))
    taps /= taps.sum()
    padded = np.pad(raw.astype(np.float64), 7, mode="reflect")
    rows_done = np.stack([np.convolve(line, taps, mode="valid") for line in padded])
    blurred = np.stack([np.convolve(line, taps, mode="valid") for line in rows_done.T]).T
    scaled = (blurred - blurred.min()) / (blurred.max() - blurred.min())
    saliency = smooth(release.raw(maps / f"{row['image_sha256']}.npy"), height, width, release.config)
    assert np.abs(saliency - scaled).max() < 1e-5
    expected = blurred > blurred.mean() - blurred.std()
    assert 0.6 < expected.mean() < 0.95  # mean - std keeps most of the map, as the release's does
    assert region.status == "ok" and np.array_equal(region.mask, expected)
    mean_rule = HeatmapLocalizer(HeatmapConfig(maps=maps)).locate_one(row)
    assert mean_rule.mask.mean() < region.mask.mean()
    with pytest.raises(ValueError, match="odd"):
        HeatmapConfig(blur_kernel_px=14)


def _regions_sha(ingest):
    samples = catalog.rows(ingest, catalog.SAMPLES)
    return next(r["image_sha256"] for r in samples if r["sample_id"] == "by-image")


def test_heatmap_source_needs_its_folder(heat):
    store, ingest, _ = heat
    with pytest.raises(ValueError, match="heatmap.maps"):
        localize(store, LocalizeConfig(source="heatmap"), ingest)


@pytest.fixture
def sam_fixture(tmp_path):
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (48, 80), dtype=np.uint8)
    rgb = rng.integers(0, 256, (70, 40, 3), dtype=np.uint8)
    paths = [write_image(tmp_path / "gray.png", gray), write_image(tmp_path / "rgb.png", rgb)]
    maps = tmp_path / "maps"
    maps.mkdir()
    rows = [
        sample_row("gray-q1", paths[0], boxes=[[8, 6, 40, 30]]),
        sample_row("gray-q2", paths[0], boxes=[[8, 6, 40, 30], [50, 10, 78, 44]]),
        sample_row("rgb-points", paths[1]),
        sample_row("gray-none", paths[0], image_sha256="f" * 64),
    ]
    write_image(maps / f"{safe_stem('rgb-points')}.png", (_blob(70, 40, 50, 12, 5.0) * 255).astype(np.uint8))
    store = ArtifactStore(tmp_path / "store")
    config = LocalizeConfig(
        source="sam",
        sam=tiny_sam_checkpoint(tmp_path / "tiny.pth").model_copy(update={"box_margin": 0.0}),
        heatmap=HeatmapConfig(maps=maps),
        min_area_fraction=0.0,
        max_area_fraction=1.0,
    )
    return store, ingest_manifest(store, rows), config, gray, rgb


def test_sam_regions_from_box_and_point_prompts(sam_fixture):
    store, ingest, config, gray, rgb = sam_fixture
    sam = tiny_sam()
    predictor = SamPredictor(sam)
    predictor.set_image(to_rgb8(gray))
    masks, iou, _ = predictor.predict(box=np.array([8, 6, 40, 30]), multimask_output=False)

    manifest = localize(store, config, ingest)
    rows = _regions(manifest)
    assert rows["gray-q1"]["status"] == "ok" and rows["gray-q1"]["source"] == "sam"
    assert rows["gray-q1"]["boxes"] == [[8.0, 6.0, 40.0, 30.0]]
    assert rows["gray-q1"]["confidence"] == pytest.approx(float(np.clip(iou[0], 0, 1)), abs=1e-4)
    mask = _mask(manifest, rows["gray-q1"])
    assert mask.shape == (48, 80)
    inside = boxes_mask([[8, 6, 40, 30]], 48, 80)
    assert not (mask & ~inside).any()  # box_margin=0: nothing outside the prompt box
    assert (mask == (masks[0] & inside)).mean() > 0.99
    assert len(rows["gray-q2"]["boxes"]) == 2
    assert rows["rgb-points"]["status"] == "ok" and rows["rgb-points"]["boxes"] == []
    assert _mask(manifest, rows["rgb-points"]).shape == (70, 40)
    assert 0.0 <= rows["rgb-points"]["confidence"] <= 1.0
    assert (rows["gray-none"]["status"], rows["gray-none"]["reason"]) == ("no_region", "no_prompt")


def test_sam_encodes_each_image_once(sam_fixture, monkeypatch):
    store, ingest, config, *_ = sam_fixture
    import models.sam

    encoded = []
    real = models.sam.SamSegmenter.segment

    def counting(self, images, prompts):
        encoded.extend(im.shape for im in images)
        return real(self, images, prompts)

    monkeypatch.setattr(models.sam.SamSegmenter, "segment", counting)
    localize(store, config, ingest)
    assert sorted(encoded) == [(48, 80), (70, 40, 3)]


def test_sam_confidence_is_the_clipped_predicted_iou(sam_fixture):
    store, ingest, config, gray, _ = sam_fixture
    rows = _regions(localize(store, config, ingest))
    predictor = SamPredictor(tiny_sam())
    predictor.set_image(to_rgb8(gray))
    ious = [
        predictor.predict(box=np.array(b), multimask_output=False)[1][0] for b in ([8, 6, 40, 30], [50, 10, 78, 44])
    ]
    assert rows["gray-q2"]["confidence"] == pytest.approx(float(np.clip(np.mean(ious), 0, 1)), abs=1e-4)


def test_grid_and_table_show_the_regions(annotated):
    store, ingest = annotated
    manifest = localize(store, LESION_MASKS, ingest)
    png = region_grid(ingest, manifest)
    from io import BytesIO

    from PIL import Image

    grid = Image.open(BytesIO(png))
    assert grid.size == (2 * (160 + 4) + 4, 16 + 3 * (160 + 14 + 4) + 4)
    table = {row["sample"]: row for row in region_rows(list(_regions(manifest).values()))}
    assert table["box"] == {"sample": "box", "status": "ok", "area %": 10.0, "confidence": 1.0}
    assert table["lost"]["status"] == "failed: missing_mask"


def test_image_grid_places_each_panel():
    from io import BytesIO

    from PIL import Image

    white = np.full((10, 20), 255, dtype=np.uint8)
    mask = np.zeros((10, 20), dtype=bool)
    png = ui.image_grid_png([[white, mask, None]], ["a", "b", "c"], cell=40)
    grid = np.asarray(Image.open(BytesIO(png)))
    top = 16 + (40 - 20) // 2  # scaled to 40x20 and centred in its 40x40 cell
    assert (grid[top, 4] == 255).all() and (grid[top + 19, 4 + 39] == 255).all()
    assert (grid[top - 1, 4] == 32).all()
    assert (grid[top + 5, 4 + 44 + 20] == 0).all()
    assert (grid[top + 5, 4 + 88 + 20] == 32).all()  # no image: background


def test_heatmap_peaks_give_one_point_per_hot_spot(tmp_path):
    from tasks.localize.regions import HeatmapLocalizer

    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / f"{'a' * 64}.npy", _blob(60, 80, 15, 20, 4.0) + _blob(60, 80, 45, 60, 4.0))
    np.save(maps / f"{'b' * 64}.npy", _blob(60, 80, 30, 40, 4.0))
    localizer = HeatmapLocalizer(HeatmapConfig(maps=maps, blur_sigma=0.0))
    row = {"sample_id": "x", "width": 80, "height": 60}
    two = localizer.peaks({**row, "image_sha256": "a" * 64}, 3)
    assert sorted(map(tuple, two.tolist())) == [(20.0, 15.0), (60.0, 45.0)]
    assert localizer.peaks({**row, "image_sha256": "b" * 64}, 3).tolist() == [[40.0, 30.0]]
    assert localizer.peaks({**row, "image_sha256": "c" * 64}, 3) is None


def test_a_coarse_maps_peak_is_its_best_cells_centre_even_on_the_border():
    relevance = np.zeros((4, 4), dtype=np.float32)
    relevance[1, 3] = 1.0  # a right-border cell: smoothed, the image's last column is the strict maximum
    saliency = smooth(relevance, 32, 32, HeatmapConfig())
    assert np.unravel_index(int(np.argmax(saliency)), saliency.shape)[1] == 31
    assert map_peaks(saliency, relevance.shape, 1) == [(12, 28)]
    relevance[3, 0] = 0.9
    assert map_peaks(smooth(relevance, 32, 32, HeatmapConfig()), relevance.shape, 3) == [(12, 28), (28, 4)]


def test_sam_batches_auto_on_the_cpu_and_an_unreadable_image_fails_alone(sam_fixture, monkeypatch):
    store, ingest, config, *_ = sam_fixture
    import models.sam

    config = config.model_copy(update={"sam": config.sam.model_copy(update={"batch_size": SamConfig().batch_size})})
    assert config.sam.batch_size == "auto"  # the default
    batches = []
    real = models.sam.SamSegmenter.segment

    def counting(self, images, prompts):
        batches.append(len(images))
        return real(self, images, prompts)

    monkeypatch.setattr(models.sam.SamSegmenter, "segment", counting)
    localize(store, config, ingest)
    assert batches == [2]  # auto = 2 images a pass on the CPU

    def unreadable_rgb(path):
        if str(path).endswith("rgb.png"):
            raise OSError("truncated")
        return load_array(path)

    monkeypatch.setattr("tasks.imaging.load_array", unreadable_rgb)
    # Another key (max_area_fraction), so the stage runs again; one image a pass as set.
    again = config.model_copy(
        update={"sam": config.sam.model_copy(update={"batch_size": 1}), "max_area_fraction": 0.99}
    )
    rows = _regions(localize(store, again, ingest))
    assert (rows["rgb-points"]["status"], rows["rgb-points"]["reason"]) == ("failed", "unreadable_image")
    assert rows["gray-q1"]["status"] == rows["gray-q2"]["status"] == "ok"
    assert batches[1:] == [1]  # the unreadable image never reaches SAM


def test_questions_on_one_image_with_the_same_boxes_share_one_localization(tmp_path, monkeypatch):
    from tasks.localize.regions import AnnotationLocalizer

    located = []
    real = AnnotationLocalizer.locate_one
    monkeypatch.setattr(AnnotationLocalizer, "locate_one", lambda self, row: located.append(row) or real(self, row))
    image = write_image(tmp_path / "img.png", np.random.default_rng(1).integers(0, 256, (40, 50), dtype=np.uint8))
    rows = [
        sample_row("q1", image, boxes=[[10, 20, 30, 30]], question="Is there a nodule?", answer="Yes"),
        sample_row("q2", image, boxes=[[10, 20, 30, 30]], question="Where is the nodule?", answer="Left lung"),
        sample_row("q3", image, boxes=[[0, 0, 20, 20]], question="Where is the nodule?", answer="Left lung"),
    ]
    store = ArtifactStore(tmp_path / "store")
    manifest = localize(store, LocalizeConfig(), ingest_manifest(store, rows))
    regions = _regions(manifest)
    # Two questions, one image, the same boxes: one computation; other boxes on it: one more.
    assert len(located) == 2
    assert [r["sample_id"] for r in catalog.rows(manifest, catalog.REGIONS)] == ["q1", "q2", "q3"]
    assert regions["q1"]["mask_path"] == regions["q2"]["mask_path"] != regions["q3"]["mask_path"]
    assert np.array_equal(_mask(manifest, regions["q1"]), _mask(manifest, regions["q2"]))
    assert manifest.counts["regions.ok"] == 3


def test_a_localizer_input_holds_what_its_sources_read(tmp_path):
    from tasks.localize import localizer_input

    image = write_image(tmp_path / "img.png", np.zeros((8, 8), dtype=np.uint8))
    one, other = (sample_row(s, image, boxes=[[1, 1, 4, 4]], question=f"{s}?") for s in ("a", "b"))
    assert localizer_input(one, LocalizeConfig()) == localizer_input(other, LocalizeConfig())
    # The attention map is the answer's relevance to the question: one per question.
    attention = LocalizeConfig().model_copy(update={"per_source": {"fixture": ["attention"]}})  # no model needed here
    assert localizer_input(one, attention) != localizer_input(other, attention)
    # Per-sample saliency maps are per sample; a map of the image is shared.
    maps = tmp_path / "maps"
    maps.mkdir()
    np.save(maps / f"{safe_stem('a')}.npy", np.ones((4, 4)))
    heat = LocalizeConfig(source="heatmap", heatmap=HeatmapConfig(maps=maps))
    assert localizer_input(one, heat) != localizer_input(other, heat)
    np.save(maps / f"{one['image_sha256']}.npy", np.ones((4, 4)))
    assert localizer_input(one, heat) == localizer_input(other, heat)
