import numpy as np
import pytest

from tasks import catalog
from tasks.config import AnnotationConfig, LocalizeConfig, NoiseConfig
from tasks.diffusion import alpha_bar, alphas_cumprod, feather, forward_diffuse, noise_array, sample_seed
from tasks.imaging import load_array
from tasks.localize import localize
from tasks.noise import noise, noise_rows
from tasks.store import ArtifactStore
from tests.support.samples import ingest_manifest, sample_row, write_image


def test_linear_schedule_matches_ddpm():
    abar = alphas_cumprod(1000, 1e-4, 0.02)
    assert abar[0] == pytest.approx(1 - 1e-4)
    assert abar[-1] == pytest.approx(4.036e-5, rel=1e-2)  # DDPM's alpha_bar_T
    assert np.all(np.diff(abar) < 0)
    assert alpha_bar(NoiseConfig(k=500)) == pytest.approx(np.prod(1 - np.linspace(1e-4, 0.02, 1000)[:500]))


def test_forward_diffusion_moments_at_default_step():
    abar = alpha_bar(NoiseConfig())
    rng = np.random.default_rng(1)
    x0 = rng.uniform(-1, 1, size=(64, 64)).astype(np.float32)
    draws = np.stack([forward_diffuse(x0, rng.standard_normal(x0.shape, dtype=np.float32), abar) for _ in range(400)])
    # Per pixel, over the noise: mean sqrt(abar) x0, variance 1 - abar.
    assert np.abs(draws.mean(axis=0) - np.sqrt(abar) * x0).max() < 5 * np.sqrt((1 - abar) / 400)
    assert draws.var(axis=0).mean() == pytest.approx(1 - abar, rel=0.02)


def _lesion_image(dtype=np.uint16):
    """Range pinned by two corner pixels; the lesion square holds mid-range values."""
    rng = np.random.default_rng(2)
    image = np.full((96, 96), 30000, dtype=dtype)
    image[0, 0], image[-1, -1] = 10000, 50000
    image[20:80, 20:80] = rng.integers(25000, 35001, size=(60, 60))
    mask = np.zeros((96, 96), dtype=bool)
    mask[20:80, 20:80] = True
    return image, mask


@pytest.mark.parametrize("k", [20, 50])
def test_noised_region_has_the_diffusion_moments(k):
    image, mask = _lesion_image()
    abar = alpha_bar(NoiseConfig(k=k))
    weight = feather(mask, 4.0)
    out = noise_array(image, weight, abar, seed=7)

    def scale(p):  # the image's own range -> [-1, 1]
        return (p.astype(np.float64) - 10000) / 20000 - 1

    inner = weight == 1.0
    residual = scale(out)[inner] - np.sqrt(abar) * scale(image)[inner]
    assert abs(residual.mean()) < 4 * np.sqrt((1 - abar) / inner.sum())
    assert residual.var() == pytest.approx(1 - abar, rel=0.06)
    assert scale(out)[inner].mean() == pytest.approx(
        np.sqrt(abar) * scale(image)[inner].mean(), abs=4 * np.sqrt((1 - abar) / inner.sum())
    )
    assert np.array_equal(out[~mask], image[~mask])


@pytest.mark.parametrize(
    "image",
    [
        np.random.default_rng(3).integers(0, 256, (64, 80), dtype=np.uint8),
        np.random.default_rng(4).integers(0, 256, (64, 80, 3), dtype=np.uint8),
        np.random.default_rng(5).integers(100, 4096, (64, 80), dtype=np.uint16),
    ],
    ids=["gray8", "rgb", "gray16"],
)
def test_local_noise_keeps_outside_pixels_and_the_image_range(image):
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[10:40, 30:70] = True
    out = noise_array(image, feather(mask, 3.0), alpha_bar(NoiseConfig()), seed=1)
    assert out.dtype == image.dtype and out.shape == image.shape
    assert np.array_equal(out[~mask], image[~mask])
    assert (out[mask] != image[mask]).mean() > 0.9
    assert out.min() >= image.min() and out.max() <= image.max()


def test_feather_ramps_inside_the_edge_only():
    mask = np.zeros((40, 40), dtype=bool)
    mask[10:30, 10:30] = True
    weight = feather(mask, 4.0)
    assert np.all(weight[~mask] == 0)
    assert weight[10, 20] == pytest.approx(0.25)  # the edge pixel: one pixel from outside
    assert weight[20, 20] == 1.0
    assert np.array_equal(feather(mask, 0.0), mask.astype(np.float32))
    touching = np.zeros((20, 20), dtype=bool)
    touching[:, :6] = True
    assert feather(touching, 4.0)[10, 0] == 1.0  # cut by the frame: noised up to the frame


def test_noise_is_deterministic_per_seed():
    image, mask = _lesion_image(np.uint16)
    weight, abar = feather(mask, 2.0), alpha_bar(NoiseConfig())
    assert np.array_equal(noise_array(image, weight, abar, 11), noise_array(image, weight, abar, 11))
    assert not np.array_equal(noise_array(image, weight, abar, 11), noise_array(image, weight, abar, 12))
    assert (
        sample_seed("slake:1", 0) == sample_seed("slake:1", 0) != sample_seed("slake:2", 0) != sample_seed("slake:1", 1)
    )


def test_global_mode_noises_everything():
    image = np.random.default_rng(6).integers(0, 256, (64, 64), dtype=np.uint8)
    out = noise_array(image, None, alpha_bar(NoiseConfig()), seed=3)
    assert (out != image).mean() > 0.9


def _fixture(tmp_path):
    rng = np.random.default_rng(8)
    boxed = write_image(tmp_path / "a.png", rng.integers(0, 256, (64, 64), dtype=np.uint8))
    rgb = write_image(tmp_path / "b.png", rng.integers(0, 256, (48, 72, 3), dtype=np.uint8))
    bare = write_image(tmp_path / "c.png", rng.integers(0, 65535, (40, 40), dtype=np.uint16))
    store = ArtifactStore(tmp_path / "store")
    ingest = ingest_manifest(
        store,
        [
            sample_row("s:boxed", boxed, boxes=[[8, 8, 40, 32]]),
            sample_row("s:rgb", rgb, boxes=[[30, 10, 70, 40]]),
            sample_row("s:bare", bare),
        ],
    )
    return store, ingest


def test_noise_stage_writes_pairs_and_skips_samples_without_region(tmp_path):
    store, ingest = _fixture(tmp_path)
    regions = localize(store, LocalizeConfig(), ingest)
    manifest = noise(store, NoiseConfig(feather_px=2), ingest, regions)
    rows = {r["sample_id"]: r for r in catalog.rows(manifest, catalog.NOISED)}
    assert rows["s:bare"]["status"] == "skipped" and rows["s:bare"]["reason"] == "no_region_no_annotation"
    assert manifest.counts == {
        "samples.seen": 3,
        "images.noised": 2,
        "images.skipped": 1,
        "images.skipped.no_region_no_annotation": 1,
    }
    original = load_array(tmp_path / "b.png")
    noised = load_array(manifest.file(rows["s:rgb"]["noised_path"]))
    assert noised.shape == original.shape == (48, 72, 3)
    box = np.zeros((48, 72), dtype=bool)
    box[10:40, 30:70] = True
    assert np.array_equal(noised[~box], original[~box])
    assert (noised[box] != original[box]).mean() > 0.9
    assert rows["s:rgb"]["seed"] == sample_seed("s:rgb", 0) and rows["s:rgb"]["k"] == 500


def test_changing_k_recomputes_noise_only(tmp_path):
    store, ingest = _fixture(tmp_path)
    regions = localize(store, LocalizeConfig(), ingest)
    first = noise(store, NoiseConfig(), ingest, regions)
    again = localize(store, LocalizeConfig(), ingest)
    stronger = noise(store, NoiseConfig(k=900), ingest, again)
    assert again.key == regions.key and again.created == regions.created
    assert stronger.key != first.key
    assert noise(store, NoiseConfig(), ingest, regions).created == first.created
    # A localize option that leaves its regions as they were: a new localize key, the same content,
    # so noise is the stored artifact (early cutoff); one that changes the regions re-keys noise.
    same = localize(store, LocalizeConfig(min_area_fraction=0.01), ingest)
    assert same.key != regions.key and same.digest == regions.digest
    assert noise(store, NoiseConfig(), ingest, same) == first
    moved = localize(store, LocalizeConfig(annotation=AnnotationConfig(confidence=0.8)), ingest)
    assert moved.digest != regions.digest and noise(store, NoiseConfig(), ingest, moved).key != first.key


def test_global_stage_noises_the_same_samples(tmp_path):
    store, ingest = _fixture(tmp_path)
    regions = localize(store, LocalizeConfig(), ingest)
    manifest = noise(store, NoiseConfig(mode="global"), ingest, regions)
    rows = {r["sample_id"]: r for r in catalog.rows(manifest, catalog.NOISED)}
    assert [rows[s]["status"] for s in ("s:boxed", "s:rgb", "s:bare")] == ["ok", "ok", "skipped"]
    original = load_array(tmp_path / "a.png")
    noised = load_array(manifest.file(rows["s:boxed"]["noised_path"]))
    assert (noised != original).mean() > 0.9


def test_unreadable_image_fails_the_sample_not_the_stage(tmp_path):
    store, ingest = _fixture(tmp_path)
    regions = localize(store, LocalizeConfig(), ingest)
    (tmp_path / "a.png").write_bytes(b"not a png")
    manifest = noise(store, NoiseConfig(), ingest, regions)
    assert manifest.counts["images.failed.unreadable_image"] == 1 and manifest.counts["images.noised"] == 1


def test_noise_table_joins_region_area_and_confidence(tmp_path):
    store, ingest = _fixture(tmp_path)
    regions = localize(store, LocalizeConfig(), ingest)
    manifest = noise(store, NoiseConfig(), ingest, regions)
    table = noise_rows(
        catalog.rows(regions, catalog.REGIONS),
        catalog.rows(manifest, catalog.NOISED),
    )
    by_sample = {row["sample"]: row for row in table}
    assert by_sample["s:boxed"] == {"sample": "s:boxed", "region area %": 18.75, "confidence": 1.0, "noised": "ok"}
    assert by_sample["s:bare"]["noised"] == "skipped: no_region_no_annotation"


def test_noise_grid_shows_original_mask_and_noised(tmp_path):
    from io import BytesIO

    from PIL import Image

    from tasks.noise import noise_grid

    store, ingest = _fixture(tmp_path)
    regions = localize(store, LocalizeConfig(), ingest)
    manifest = noise(store, NoiseConfig(), ingest, regions)
    grid = Image.open(BytesIO(noise_grid(ingest, regions, manifest)))
    assert grid.size == (3 * (160 + 4) + 4, 16 + 2 * (160 + 14 + 4) + 4)  # two noised samples, three columns
    empty = noise(store, NoiseConfig(), ingest, localize(store, LocalizeConfig(min_area_fraction=0.9), ingest))
    assert noise_grid(ingest, regions, empty) is None
