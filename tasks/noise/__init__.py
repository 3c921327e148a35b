"""Stage 3, lesion noising: the rejected image of a visual pair."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

from prefect import task

from tasks import catalog, ui
from tasks.catalog import NOISED, REGIONS, SAMPLES
from tasks.config import NoiseConfig
from tasks.counters import Counters
from tasks.imaging import load_array, save_array
from tasks.noise.diffusion import feather, noise_array, sample_seed
from tasks.store import ArtifactStore, Manifest, by_content, code_version, stage_task_options

STAGE = "noise"
CODE = code_version(__name__)
GRID_SAMPLES = 8
NOISED_FILE = "noised.png"


def noise(store: ArtifactStore, config: NoiseConfig, ingest: Manifest, localize: Manifest) -> Manifest:
    """Each localized sample's image, forward-diffused inside its region (tasks.noise.diffusion).

    By default as the paper's text and POVID noise (the sigmoid schedule at k = 500, on the
    normalized values of the model the pairs are for: ``space: auto``), stored as pixels, with one
    noise field for a grey image's channels.
    Outside the region the pixels are the original ones, bit for bit; the noise ramps up over
    ``feather_px`` inside the region's edge. ``mode=global`` noises the whole image instead
    (the paper's ablation) for the same samples, so the two compare pair for pair. With
    ``seed_per=image`` (the default) an image is noised once per distinct region and shared by
    every question on it, its eps seeded by the image's content digest; with ``seed_per=sample``
    each sample is noised on its own, seeded by its sample_id. Either way runs with different
    ``k`` use the same eps at different strengths.

    Inputs: ``ingest`` (SAMPLES), ``localize`` (REGIONS and masks). Output:
    ``noised.parquet`` (NOISED); the noised PNGs (same size, dtype and channels) are store blobs
    the rows name.
    Counters: ``samples.seen``, ``images.noised``, ``images.skipped.<reason>``,
    ``images.failed.<reason>``.
    """
    return store.run(
        STAGE,
        CODE,
        config,
        {"ingest": ingest, "localize": localize},
        lambda out: build_noised(out, config, ingest, localize, store),
    )


# What a noised image depends on: its image by content, its region row with the mask by content
# (never the localize artifact's folder), the config less the thread count, and with
# seed_per=sample the sample_id (then no two samples share one).
SAMPLE_FIELDS = ("image_sha256",)
REGION_FIELDS = ("status", "reason")
SAMPLE_COLUMNS = ("sample_id", "image_path", *SAMPLE_FIELDS)
REGION_COLUMNS = ("sample_id", "mask_path", *REGION_FIELDS)


def build_noised(
    out: Path, config: NoiseConfig, ingest: Manifest, localize: Manifest, store: ArtifactStore
) -> dict[str, float]:
    # Only what an item is and reads: every column of every sample and region as Python objects
    # was most of this stage's memory and of a re-run's time in it.
    samples = {r["sample_id"]: r for r in catalog.rows(ingest, SAMPLES, SAMPLE_COLUMNS)}
    regions = catalog.rows(localize, REGIONS, REGION_COLUMNS)
    region_dir = Path(localize.path)
    items = store.items(STAGE, CODE, config)
    work = []
    for region in regions:
        sample_id = region["sample_id"]
        sample = samples.get(sample_id)
        content = {
            "sample": None if sample is None else by_content(sample, SAMPLE_FIELDS),
            "region": by_content(region, REGION_FIELDS, {"mask_path": region_dir}),
        }
        per_sample = config.seed_per == "sample" or sample is None
        if per_sample:
            content["sample_id"] = sample_id
        seed = sample_seed(sample_id if per_sample else f"sha256:{sample['image_sha256']}", config.seed)
        work.append(items.item(content, (region, sample, str(region_dir), seed)))
    # Samples that share an item share its one image; build hands each its own row, re-labelled in place.
    records = items.build(out, work, partial(noise_items, resolved(config)))
    del work
    for row, region in zip(records, regions):
        row["sample_id"] = region["sample_id"]
    catalog.write(out, NOISED, records)
    counts = Counters()
    counts.add("samples", "seen", n=len(records))
    for row in records:
        counts.add("images", "noised" if row["status"] == "ok" else row["status"], row["reason"])
    return counts.as_dict()


def resolved(config: NoiseConfig) -> NoiseConfig:
    """``space: auto`` made concrete: the normalization of ``model_path``'s processor (a SigLIP tower's
    0.5 / 0.5 gives ~1.8x CLIP's noise in grey levels), CLIP's when no model is named."""
    if config.space != "auto":
        return config
    if config.model_path is None:
        return config.model_copy(update={"space": "clip"})
    from models.vlm import image_normalization

    mean, std = image_normalization(config.model_path)
    return config.model_copy(update={"space": "clip", "clip_mean": mean, "clip_std": std})


def noise_items(
    config: NoiseConfig, payloads: Sequence[tuple], folders: Sequence[Path]
) -> tuple[list[dict[str, Any]], dict]:
    """One shard: NOISED rows, each noised image written under its item folder."""
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        rows = list(
            pool.map(
                lambda job: noise_one(job[1], *job[0][:2], Path(job[0][2]), config, job[0][3]),
                zip(payloads, folders),
            )
        )
    return rows, {}


def noise_one(
    out: Path,
    region: Mapping[str, Any],
    sample: Mapping[str, Any] | None,
    region_dir: Path,
    config: NoiseConfig,
    seed: int,
) -> dict[str, Any]:
    """Noise one image given its localize row and seed, into the item folder ``out`` (the shard
    stores it once by content); always returns a NOISED row."""
    row = {
        "sample_id": region["sample_id"],
        "status": "ok",
        "reason": None,
        "noised_path": None,
        "mode": config.mode,
        "k": config.k,
        "seed": seed,
    }
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
    save_array(noise_array(pixels, weight, config, seed), out / NOISED_FILE)
    return {**row, "noised_path": NOISED_FILE}


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
    done = catalog.first_ok(noised, NOISED, ["sample_id", "noised_path"], limit)
    if not done:
        return None
    shown = [r["sample_id"] for r in done]
    images = catalog.values_of(ingest, SAMPLES, shown, "image_path")
    masks = catalog.values_of(localize, REGIONS, shown, "mask_path")
    rows = []
    for row in done:
        sample_id = row["sample_id"]
        mask = masks.get(sample_id)
        rows.append(
            [
                load_array(images[sample_id]),
                load_array(Path(localize.path) / mask) if mask else None,
                load_array(Path(noised.path) / row["noised_path"]),
            ]
        )
    titles = ["original", "mask", f"noised ({noised.config['mode']}, k={noised.config['k']})"]
    return ui.image_grid_png(rows, titles, shown)


@task(**stage_task_options(STAGE, CODE))
def noise_task(store_root: str, config: NoiseConfig, ingest: Manifest, localize: Manifest) -> Manifest:
    manifest = noise(ArtifactStore(store_root), config, ingest, localize)
    ui.manifest_markdown(manifest)
    shown = catalog.head(manifest, NOISED, ["sample_id", "status", "reason"], ui.MAX_TABLE_ROWS)
    regions = catalog.rows_of(localize, REGIONS, [r["sample_id"] for r in shown], ["area_fraction", "confidence"])
    ui.table(f"{STAGE}-samples", noise_rows(regions, shown), f"{config.mode} noising at k={config.k}")
    grid = noise_grid(ingest, localize, manifest)
    if grid is not None:
        ui.image(
            f"{STAGE}-grid",
            grid,
            f"first {GRID_SAMPLES} visual pairs (original | mask | noised: {config.schedule} schedule, "
            f"k={config.k}, {config.space} space, {config.channels} channels)",
        )
    return manifest
