"""Stage 3, lesion noising: the rejected image of a visual pair.

Inside the localized region the image becomes a DDPM forward-diffusion sample
``x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps`` (x0 = the image scaled to [-1, 1],
``abar_k`` from a linear beta schedule); outside it the pixels are the original ones, bit
for bit. The noise ramps up over ``feather_px`` pixels inside the region's edge, so the
region shows no hard seam yet nothing outside it changes. ``mode=global`` noises the whole
image instead (the paper's ablation) for the same samples, so the two compare pair for pair.
The noise of a sample depends only on its sample_id and ``config.seed``: re-running gives
the same image, and runs with different ``k`` use the same eps at different strengths.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from prefect import task
from scipy import ndimage

from tasks import schemas, ui
from tasks.config import NoiseConfig
from tasks.imaging import load_array, save_array
from tasks.store import ArtifactStore, Manifest, by_content, code_version, content_hash, safe_stem, stage_task_options

STAGE = "noise"
CODE = code_version(__name__, "tasks.imaging")
GRID_SAMPLES = 8


def alphas_cumprod(timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """abar_k for k = 1..T at index k - 1 (DDPM's linear schedule)."""
    betas = np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def alpha_bar(config: NoiseConfig) -> float:
    return float(alphas_cumprod(config.timesteps, config.beta_start, config.beta_end)[config.k - 1])


def forward_diffuse(x0: np.ndarray, eps: np.ndarray, abar: float) -> np.ndarray:
    return np.sqrt(abar, dtype=np.float32) * x0 + np.sqrt(1.0 - abar, dtype=np.float32) * eps


def sample_seed(sample_id: str, seed: int) -> int:
    return int(content_hash(sample_id, seed, length=15), 16)


def feather(mask: np.ndarray, width: float) -> np.ndarray:
    """Noise weight in [0, 1]: 0 outside the mask, rising to 1 over ``width`` px inside its edge."""
    if width <= 0:
        return mask.astype(np.float32)
    weight = np.zeros(mask.shape, dtype=np.float32)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return weight
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Edge padding: a lesion cut by the image frame is noised right up to the frame.
    # The distance transform runs on the mask's bounding box plus a one-pixel ring only:
    # the nearest outside pixel of any mask pixel is never farther than that ring.
    ring = np.pad(mask, 1, mode="edge")[r0 : r1 + 2, c0 : c1 + 2]
    distance = ndimage.distance_transform_edt(ring)[1:-1, 1:-1] if not ring.all() else np.full((r1 - r0, c1 - c0), np.inf)
    weight[r0:r1, c0:c1] = np.clip(distance / width, 0.0, 1.0)
    return weight


def value_range(pixels: np.ndarray) -> tuple[float, float]:
    """The image's own range (16-bit images rarely use all 16 bits); a flat image: its dtype's."""
    low, high = float(pixels.min()), float(pixels.max())
    if high > low:
        return low, high
    return 0.0, float(np.iinfo(pixels.dtype).max)


def noise_array(pixels: np.ndarray, weight: np.ndarray | None, abar: float, seed: int) -> np.ndarray:
    """Noised copy of an image from ``load_array`` (gray uint8/uint16 or RGB uint8).

    ``weight`` (H, W) in [0, 1] blends x0 into x_k per pixel; None noises everything. Only
    the bounding box of the weight's support is computed: the rest is copied.
    """
    if weight is None:
        window: tuple[slice, ...] = (slice(None), slice(None))
        local = None
    else:
        rows, cols = np.flatnonzero(weight.any(axis=1)), np.flatnonzero(weight.any(axis=0))
        if not len(rows):
            return pixels.copy()
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        local = weight[window]
        if pixels.ndim == 3:
            local = local[:, :, None]
    low, high = value_range(pixels)
    crop = pixels[window]
    x0 = (crop.astype(np.float32) - low) * np.float32(2.0 / (high - low)) - 1.0
    eps = np.random.default_rng(seed).standard_normal(crop.shape, dtype=np.float32)
    xk = forward_diffuse(x0, eps, abar)
    if local is not None:
        xk = x0 + local * (xk - x0)
    back = np.rint((np.clip(xk, -1.0, 1.0) + 1.0) * np.float32((high - low) / 2.0) + low).astype(pixels.dtype)
    out = pixels.copy()
    out[window] = back if local is None else np.where(local > 0, back, crop)
    return out


def noise(store: ArtifactStore, config: NoiseConfig, ingest: Manifest, localize: Manifest) -> Manifest:
    return store.run(
        STAGE, CODE, config, {"ingest": ingest, "localize": localize}, lambda out: build_noised(out, config, ingest, localize, store)
    )


# What a sample's noised image depends on: its image by content, its region row with the mask
# by content (never the localize artifact's folder), and the config less the thread count.
SAMPLE_FIELDS = ("sample_id", "image_sha256")
REGION_FIELDS = ("sample_id", "status", "reason")


def build_noised(out: Path, config: NoiseConfig, ingest: Manifest, localize: Manifest, store: ArtifactStore) -> dict[str, float]:
    samples = {r["sample_id"]: r for r in schemas.read_parquet(ingest.file("samples.parquet"), schemas.SAMPLES).to_pylist()}
    regions = schemas.read_parquet(localize.file("regions.parquet"), schemas.REGIONS).to_pylist()
    region_dir = Path(localize.path)
    items = store.items(STAGE, CODE, config)
    work = []
    for region in regions:
        sample = samples.get(region["sample_id"])
        content = {
            "sample": None if sample is None else by_content(sample, SAMPLE_FIELDS),
            "region": by_content(region, REGION_FIELDS, {"mask_path": region_dir}),
        }
        work.append(items.item(content, (region, sample, str(region_dir))))
    records = items.build(out, work, partial(noise_items, config))
    schemas.write_parquet(schemas.table(records, schemas.NOISED), out / "noised.parquet")
    counts: dict[str, float] = {"samples": float(len(records)), "kept": 0.0}
    for row in records:
        name = "kept" if row["status"] == "ok" else f"{row['status']}_{row['reason']}"
        counts[name] = counts.get(name, 0.0) + 1
    return counts


def noise_items(config: NoiseConfig, payloads: Sequence[tuple], folders: Sequence[Path]) -> tuple[list[dict[str, Any]], dict]:
    """One shard: NOISED rows, each noised image written under its item folder."""
    abar = alpha_bar(config)
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        rows = list(pool.map(lambda job: noise_one(job[1], job[0][0], job[0][1], Path(job[0][2]), config, abar), zip(payloads, folders)))
    return rows, {}


def noise_one(
    out: Path, region: Mapping[str, Any], sample: Mapping[str, Any] | None, region_dir: Path, config: NoiseConfig, abar: float
) -> dict[str, Any]:
    """Noise one sample's image given its localize row; always returns a NOISED row."""
    seed = sample_seed(region["sample_id"], config.seed)
    row = {"sample_id": region["sample_id"], "status": "ok", "reason": None, "noised_path": None, "mode": config.mode, "k": config.k, "seed": seed}
    if region["status"] != "ok":
        return {**row, "status": "skipped", "reason": f"{region['status']}_{region['reason']}"}
    if sample is None:
        return {**row, "status": "failed", "reason": "unknown_sample"}
    try:
        pixels = load_array(sample["image_path"])
    except (OSError, ValueError, SyntaxError):
        return {**row, "status": "failed", "reason": "unreadable_image"}
    weight = None
    if config.mode == "local":
        try:
            mask = load_array(region_dir / region["mask_path"]) > 0
        except (OSError, ValueError, SyntaxError):
            return {**row, "status": "failed", "reason": "unreadable_mask"}
        if mask.shape != pixels.shape[:2]:
            return {**row, "status": "failed", "reason": "mask_size_mismatch"}
        weight = feather(mask, config.feather_px)
    noised_path = f"images/{safe_stem(region['sample_id'])}.png"
    save_array(noise_array(pixels, weight, abar, seed), out / noised_path)
    return {**row, "noised_path": noised_path}


def noise_rows(regions: Sequence[Mapping[str, Any]], noised: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The UI table: sample, region area %, confidence, noising status."""
    by_id = {r["sample_id"]: r for r in regions}
    rows = []
    for row in noised:
        region = by_id.get(row["sample_id"], {})
        area = region.get("area_fraction")
        confidence = region.get("confidence")
        rows.append(
            {
                "sample": row["sample_id"],
                "region area %": None if area is None else round(100 * area, 2),
                "confidence": None if confidence is None else round(confidence, 3),
                "noised": row["status"] if row["status"] == "ok" else f"{row['status']}: {row['reason']}",
            }
        )
    return rows


def noise_grid(ingest: Manifest, localize: Manifest, noised: Manifest, limit: int = GRID_SAMPLES) -> bytes | None:
    """original | mask | noised for the first ``limit`` noised samples."""
    samples = {r["sample_id"]: r for r in schemas.read_parquet(ingest.file("samples.parquet"), schemas.SAMPLES).to_pylist()}
    masks = {r["sample_id"]: r["mask_path"] for r in schemas.read_parquet(localize.file("regions.parquet"), schemas.REGIONS).to_pylist()}
    done = [r for r in schemas.read_parquet(noised.file("noised.parquet"), schemas.NOISED).to_pylist() if r["status"] == "ok"]
    if not done:
        return None
    rows = []
    for row in done[:limit]:
        sample_id = row["sample_id"]
        rows.append(
            [
                load_array(samples[sample_id]["image_path"]),
                load_array(Path(localize.path) / masks[sample_id]),
                load_array(Path(noised.path) / row["noised_path"]),
            ]
        )
    return ui.image_grid_png(rows, ["original", "mask", f"noised ({noised.config['mode']}, k={noised.config['k']})"], [r["sample_id"] for r in done[:limit]])


@task(**stage_task_options(STAGE, CODE))
def noise_task(store_root: str, config: NoiseConfig, ingest: Manifest, localize: Manifest) -> Manifest:
    manifest = noise(ArtifactStore(store_root), config, ingest, localize)
    ui.manifest_markdown(manifest)
    regions = schemas.read_parquet(localize.file("regions.parquet"), schemas.REGIONS).to_pylist()
    noised = schemas.read_parquet(manifest.file("noised.parquet"), schemas.NOISED).to_pylist()
    ui.table(f"{STAGE}-samples", noise_rows(regions, noised), f"{config.mode} noising at k={config.k}")
    grid = noise_grid(ingest, localize, manifest)
    if grid is not None:
        ui.image(f"{STAGE}-grid", grid, f"first {GRID_SAMPLES} visual pairs (original | mask | noised)")
    return manifest
