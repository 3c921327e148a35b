from pathlib import Path

import numpy as np
import pytest

from tasks import catalog
from tasks.config import AnnotationConfig, LocalizeConfig, NoiseConfig
from tasks.config.noise import CLIP_MEAN, CLIP_STD, alpha_bar, alphas_cumprod
from tasks.imaging import load_array
from tasks.localize import localize
from tasks.noise import noise, noise_rows
from tasks.noise.diffusion import feather, forward_diffuse, noise_array, sample_seed
from tasks.store import ArtifactStore
from tests.support.samples import ingest_manifest, sample_row, write_image


def test_default_schedule_is_the_releases_sigmoid_one():
    # POVID's add_diffusion_noise: sigmoid(linspace(-6, 6, 1000)) * (5e-3 - 1e-5) + 1e-5, cumprod indexed from 0.
    abar = alpha_bar(NoiseConfig())
    assert np.sqrt(abar) == pytest.approx(0.8630, abs=5e-5)
    assert np.sqrt(1 - abar) == pytest.approx(0.5052, abs=5e-5)
    assert abar == pytest.approx(0.7448, abs=5e-5)
    betas = 1 / (1 + np.exp(-np.linspace(-6, 6, 1000))) * (5e-3 - 1e-5) + 1e-5
    assert abar == pytest.approx(np.prod(1 - betas[:501]), rel=1e-12)  # k = 500 is the 501st factor
    assert alphas_cumprod(NoiseConfig())[0] == pytest.approx(1 - betas[0])


def test_linear_schedule_matches_ddpm():
    linear = NoiseConfig(schedule="linear")
    abar = alphas_cumprod(linear)
    assert abar[0] == pytest.approx(1 - 1e-4)
    assert abar[-1] == pytest.approx(4.036e-5, rel=1e-2)  # DDPM's alpha_bar_T
    assert np.all(np.diff(abar) < 0)
    assert alpha_bar(linear) == pytest.approx(np.prod(1 - np.linspace(1e-4, 0.02, 1000)[:501]))
    # The erased lesion the sigmoid default avoids: 0.28 of the signal under 0.96 noise.
    assert np.sqrt(alpha_bar(linear)) == pytest.approx(0.279, abs=1e-3)
    assert np.sqrt(1 - alpha_bar(linear)) == pytest.approx(0.960, abs=1e-3)


def test_noise_config_checks_the_step_and_betas():
    with pytest.raises(ValueError, match="past the schedule"):
        NoiseConfig(k=1000)
    with pytest.raises(ValueError, match="beta_end"):
        NoiseConfig(beta_start=0.01)  # above the sigmoid schedule's default beta_end
    assert NoiseConfig(schedule="linear").betas == (1e-4, 0.02)
    assert NoiseConfig(beta_start=2e-5).betas == (2e-5, 5e-3)


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


@pytest.mark.parametrize("space", ["minmax", "clip"])
@pytest.mark.parametrize("k", [20, 50])
def test_noised_region_has_the_diffusion_moments(k, space):
    image, mask = _lesion_image()
    config = NoiseConfig(k=k, space=space)
    abar = alpha_bar(config)
    weight = feather(mask, 4.0)
    out = noise_array(image, weight, config, seed=7)

    def scale(p):  # a 16-bit image's own range -> [0, 1] -> the space's values
        v = (p.astype(np.float64) - 10000) / 40000
        return 2 * v - 1 if space == "minmax" else (v - np.mean(CLIP_MEAN)) / np.mean(CLIP_STD)

    inner = weight == 1.0
    residual = scale(out)[inner] - np.sqrt(abar) * scale(image)[inner]
    assert abs(residual.mean()) < 4 * np.sqrt((1 - abar) / inner.sum())
    assert residual.var() == pytest.approx(1 - abar, rel=0.06)
    assert scale(out)[inner].mean() == pytest.approx(
        np.sqrt(abar) * scale(image)[inner].mean(), abs=4 * np.sqrt((1 - abar) / inner.sum())
    )
    assert np.array_equal(out[~mask], image[~mask])


def _flat_grey(channels):
    image = np.full((240, 240) if channels == 1 else (240, 240, 3), 128, dtype=np.uint8)
    mask = np.zeros((240, 240), dtype=bool)
    mask[20:220, 20:220] = True
    return image, mask


def test_flat_grey_region_spread_is_the_clip_noise_in_grey_levels():
    # In CLIP's space the noise is sqrt(1 - abar) = 0.505 normalized units, i.e. 0.505 x std x 255 grey levels
    # (about 35); the mean is the signal shrunk by 0.863 around CLIP's mean. Mid-grey is far from 0 and 255,
    # so clipping does not narrow the spread.
    config = NoiseConfig()
    image, mask = _flat_grey(1)
    inside = noise_array(image, mask.astype(np.float32), config, seed=1)[mask].astype(np.float64)
    expected = 0.5052 * np.mean(CLIP_STD) * 255
    assert expected == pytest.approx(34.6, abs=0.1)
    assert inside.std() == pytest.approx(expected, rel=0.05)
    assert inside.mean() == pytest.approx(255 * (0.8630 * 128 / 255 + (1 - 0.8630) * np.mean(CLIP_MEAN)), abs=0.5)
    rgb, _ = _flat_grey(3)
    noised = noise_array(rgb, mask.astype(np.float32), config, seed=1)[mask].astype(np.float64)
    for channel, std in enumerate(CLIP_STD):
        assert noised[:, channel].std() == pytest.approx(0.5052 * std * 255, rel=0.05)


def test_grey_image_stays_grey_unless_channels_are_independent():
    image = np.repeat(np.random.default_rng(9).integers(60, 200, (64, 64, 1), dtype=np.uint8), 3, axis=2)
    mask = np.zeros((64, 64), dtype=bool)
    mask[8:56, 8:56] = True
    root_abar = np.sqrt(alpha_bar(NoiseConfig()))

    def noise_in_std_units(out):
        # Per channel: pixel/255 = sqrt(abar) v + (1 - sqrt(abar)) mean_c + sqrt(1 - abar) std_c eps, so one shared
        # eps gives the same value on every channel once each channel's affine map is undone.
        v = image[mask].astype(np.float64) / 255
        signal = root_abar * v + (1 - root_abar) * np.asarray(CLIP_MEAN)
        return (out[mask].astype(np.float64) / 255 - signal) / np.asarray(CLIP_STD)

    out = noise_array(image, mask.astype(np.float32), NoiseConfig(), seed=2)
    unclipped = ((out[mask] > 0) & (out[mask] < 255)).all(axis=1)  # clipping at 0 or 255 is per channel
    assert unclipped.mean() > 0.95
    shared = noise_in_std_units(out)[unclipped]
    rounding = 0.5 / 255 / min(CLIP_STD) + 1e-6  # half a grey level, in std units of the narrowest channel
    assert np.abs(shared - shared[:, :1]).max() <= 2 * rounding
    independent = noise_in_std_units(
        noise_array(image, mask.astype(np.float32), NoiseConfig(channels="independent"), seed=2)
    )
    assert np.abs(independent - independent[:, :1]).mean() > 0.3  # colour speckle: the release's behaviour
    colour = np.random.default_rng(10).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    coloured = noise_array(colour, mask.astype(np.float32), NoiseConfig(), seed=2)
    drift = coloured[mask].astype(np.int16) - colour[mask]
    assert not np.array_equal(drift[:, 0], drift[:, 1])  # a colour image keeps a field per channel


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
    out = noise_array(image, feather(mask, 3.0), NoiseConfig(), seed=1)
    assert out.dtype == image.dtype and out.shape == image.shape
    assert np.array_equal(out[~mask], image[~mask])
    assert (out[mask] != image[mask]).mean() > 0.85
    # 8-bit: clipped to 0..255; 16-bit: to the image's own range, so a stretch for display is unchanged.
    low, high = (0, 255) if image.dtype == np.uint8 else (image.min(), image.max())
    assert out.min() >= low and out.max() <= high


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
    weight, config = feather(mask, 2.0), NoiseConfig()
    assert np.array_equal(noise_array(image, weight, config, 11), noise_array(image, weight, config, 11))
    assert not np.array_equal(noise_array(image, weight, config, 11), noise_array(image, weight, config, 12))
    assert (
        sample_seed("slake:1", 0) == sample_seed("slake:1", 0) != sample_seed("slake:2", 0) != sample_seed("slake:1", 1)
    )


def test_global_mode_noises_everything():
    image = np.random.default_rng(6).integers(0, 256, (64, 64), dtype=np.uint8)
    out = noise_array(image, None, NoiseConfig(), seed=3)
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
    image_digest = ingest_rows(ingest)["s:rgb"]["image_sha256"]
    assert rows["s:rgb"]["seed"] == sample_seed(f"sha256:{image_digest}", 0) and rows["s:rgb"]["k"] == 500


def ingest_rows(ingest):
    return {r["sample_id"]: r for r in catalog.rows(ingest, catalog.SAMPLES)}


def _questions_on_one_image(tmp_path):
    """Three questions on one image with one box, and a fourth with a box elsewhere."""
    pixels = np.random.default_rng(3).integers(0, 256, (64, 64), dtype=np.uint8)
    scan = write_image(tmp_path / "scan.png", pixels)
    store = ArtifactStore(tmp_path / "store")
    rows = [sample_row(f"q:{i}", scan, boxes=[[8, 8, 40, 32]], question=f"question {i}?") for i in range(3)]
    rows.append(sample_row("q:other-box", scan, boxes=[[30, 30, 60, 60]]))
    return store, ingest_manifest(store, rows), pixels


def test_questions_on_one_image_share_one_noised_image(tmp_path):
    store, ingest, pixels = _questions_on_one_image(tmp_path)
    manifest = noise(store, NoiseConfig(), ingest, localize(store, LocalizeConfig(), ingest))
    rows = {r["sample_id"]: r for r in catalog.rows(manifest, catalog.NOISED)}
    assert [rows[f"q:{i}"]["status"] for i in range(3)] == ["ok"] * 3
    shared = {rows[f"q:{i}"]["noised_path"] for i in range(3)}
    assert len(shared) == 1 and rows["q:other-box"]["noised_path"] not in shared
    one, other = (load_array(manifest.file(rows[s]["noised_path"])) for s in ("q:0", "q:other-box"))
    assert not np.array_equal(one, other) and not np.array_equal(one, pixels)
    assert manifest.work["computed"] == 2 and manifest.counts["images.noised"] == 4
    # The per-sample seed stays an option: then each question has its own noise.
    apart = noise(store, NoiseConfig(seed_per="sample"), ingest, localize(store, LocalizeConfig(), ingest))
    own = {r["sample_id"]: r for r in catalog.rows(apart, catalog.NOISED)}
    assert len({own[f"q:{i}"]["noised_path"] for i in range(3)}) == 3
    assert own["q:0"]["seed"] == sample_seed("q:0", 0) != own["q:1"]["seed"]
    first, second = (load_array(apart.file(own[f"q:{i}"]["noised_path"])) for i in range(2))
    assert not np.array_equal(first, second) and not np.array_equal(first, pixels)


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


def test_grids_read_the_first_ok_rows_and_only_their_samples_images(tmp_path):
    store, ingest = _fixture(tmp_path)
    manifest = noise(store, NoiseConfig(), ingest, localize(store, LocalizeConfig(), ingest))
    (done,) = catalog.first_ok(manifest, catalog.NOISED, ["sample_id"], 1)
    assert done == {"status": "ok", "sample_id": done["sample_id"]}
    images = catalog.values_of(ingest, catalog.SAMPLES, [done["sample_id"], "absent"], "image_path")
    assert list(images) == [done["sample_id"]] and Path(images[done["sample_id"]]).is_file()
