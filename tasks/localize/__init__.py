"""Stage 2, lesion localization: per sample a binary region mask, the boxes used, a confidence."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task

from tasks import catalog, ui
from tasks.catalog import REGIONS, SAMPLES
from tasks.config import LocalizeConfig
from tasks.counters import Counters, qualified, reasons
from tasks.imaging import load_array, save_array
from tasks.localize.localizers import ChainLocalizer, make_localizer
from tasks.localize.regions import Region, finish, heatmap_file
from tasks.store import ArtifactStore, Manifest, by_content, code_version, content_hash, stage_task_options
from tasks.ui import alert

STAGE = "localize"
CODE = code_version(__name__)
CHUNK_ROWS = 64
GRID_SAMPLES = 8
MASK_FILE = "mask.png"  # in the item's folder; stored as a blob by content


def localize(store: ArtifactStore, config: LocalizeConfig, ingest: Manifest) -> Manifest:
    """A lesion region per sample from the configured source (tasks.localize.regions).

    Inputs: ``ingest`` (SAMPLES). Output: ``regions.parquet`` (REGIONS: status, reason, mask
    path, boxes, confidence - the visual pair's clinical-relevance score - and area); the masks
    (binary PNGs, image size) are store blobs the rows name. Per-sample items, computed in shards.
    Counters: ``samples.seen``, ``regions.ok``, ``regions.no_region.<reason>``,
    ``regions.failed.<reason>``, ``regions.ok.sam_fallback_<why>`` (attention regions SAM did not refine).
    """
    return store.run(STAGE, CODE, config, {"ingest": ingest}, lambda out: build_regions(out, config, ingest, store))


def build_regions(out: Path, config: LocalizeConfig, ingest: Manifest, store: ArtifactStore) -> dict[str, float]:
    # What the sources read of a sample, not its every column: at 16k samples these Python rows
    # were most of a re-run's time in this stage, which computed only the new images.
    samples = catalog.rows(ingest, SAMPLES, SAMPLE_COLUMNS)
    items = store.items(STAGE, CODE, config)
    # Same-image samples side by side (and so mostly in one shard), so SAM encodes each image once.
    order = sorted(samples, key=lambda s: (s["image_sha256"], s["sample_id"]))
    work = [items.item(localizer_input(s, config), s) for s in order]
    compute = partial(locate_items, config, content_hash(items.identity))
    # Samples with one localizer input (every question on an image, for the image's sources) share
    # one item: one computation, one row and one mask, each row re-labelled with its own sample.
    rows = items.build(out, work, compute)
    del work
    # build hands each sample a row of its own: relabelled in place, not copied again.
    for sample, row in zip(order, rows):
        row["sample_id"] = sample["sample_id"]
    by_id = {row["sample_id"]: row for row in rows}
    records = [by_id[s["sample_id"]] for s in samples]
    catalog.write(out, REGIONS, records)
    return region_counts(records, [s["dataset"] for s in samples])


# What every source reads of a sample: its image by content (never by path) and size, its boxes
# and their labels (which boxes are lesions), the data set's own mask by content.
IMAGE_FIELDS = ("image_sha256", "width", "height", "boxes", "box_labels")
# The attention source maps the answer's relevance to the question: it differs per question.
TEXT_FIELDS = ("question", "answer")
SAMPLE_COLUMNS = ("sample_id", "dataset", "image_path", "mask_path", *IMAGE_FIELDS, *TEXT_FIELDS)


def localizer_input(sample: Mapping[str, Any], config: LocalizeConfig) -> dict[str, Any]:
    """An item's identity: what the sources of the sample's chain read of it, so that questions
    on one image share one localization wherever their sources read only the image and its
    annotation. The chain itself (not the data set's name) says which sources run; a saliency
    map is named by the file it comes from (the image's or the sample's own)."""
    chain = config.chain_for(sample["dataset"])
    content = by_content(sample, IMAGE_FIELDS, {"mask_path": None}) | {"chain": chain}
    if "attention" in chain:
        content |= {name: sample.get(name) for name in TEXT_FIELDS}
    if config.heatmap.maps is not None and {"heatmap", "sam"} & set(chain):
        found = heatmap_file(Path(config.heatmap.maps), sample)
        content["heatmap"] = None if found is None else found.name
    return content


# One localizer (one SAM load) per process, however many shards it runs: the last one made, keyed
# by the config and the content of the files it names (new weights under the same name: a new one).
_LOCALIZER: dict[str, ChainLocalizer] = {}
_LOCALIZER_LOCK = threading.Lock()


def localizer_for(config: LocalizeConfig, key: str) -> ChainLocalizer:
    with _LOCALIZER_LOCK:
        if key not in _LOCALIZER:
            _LOCALIZER.clear()
            _LOCALIZER[key] = make_localizer(config)
        return _LOCALIZER[key]


def locate_items(
    config: LocalizeConfig, key: str, samples: Sequence[Mapping[str, Any]], folders: Sequence[Path]
) -> tuple[list[dict[str, Any]], dict]:
    """One shard: REGIONS rows, each sample's mask written under its item folder. ``key`` names
    the localizer: the items' shared identity (config and the digests of the files it names)."""
    localizer = localizer_for(config, key)
    records: list[dict[str, Any]] = []
    for start in range(0, len(samples), CHUNK_ROWS):
        chunk = samples[start : start + CHUNK_ROWS]
        regions = localizer.locate(chunk)
        for sample, folder, region in zip(chunk, folders[start : start + CHUNK_ROWS], regions):
            source = region.source or localizer.source
            records.append(record(folder, sample["sample_id"], source, *finish(region, config)))
    return records, {}


def record(out: Path, sample_id: str, source: str, region: Region, area: float | None) -> dict[str, Any]:
    mask_path = None
    if region.status == "ok":
        mask_path = MASK_FILE
        save_array(region.mask.astype(np.uint8) * 255, out / mask_path)
    return {
        "sample_id": sample_id,
        "status": region.status,
        "reason": region.reason,
        "source": source,
        "mask_path": mask_path,
        "boxes": region.boxes if region.status == "ok" else [],
        "confidence": region.confidence if region.status == "ok" else None,
        "area_fraction": area if region.status == "ok" else None,
    }


def region_counts(records: Sequence[Mapping[str, Any]], datasets: Sequence[str]) -> dict[str, float]:
    counts = Counters()
    counts.add("samples", "seen", n=len(records))
    for row, dataset in zip(records, datasets):
        counts.add("regions", row["status"], row["reason"])
        counts.add(qualified("samples", dataset), "seen")
        # Per data set: ok regions by the source that found them, the others by reason.
        ok = row["status"] == "ok"
        counts.add(qualified("regions", dataset), row["status"], f"by_{row['source']}" if ok else row["reason"])
    return counts.as_dict()


def coverage_alerts(manifest: Manifest) -> list[str]:
    """A line per data set whose share of samples with a region (hence of visual pairs) is below
    ``min_visual_share``: its share and why the others got none."""
    share_floor = float(manifest.config.get("min_visual_share", 0.5))
    counts = manifest.counts
    alerts = []
    for key, seen in sorted(counts.items()):
        if not (key.startswith("samples[") and key.endswith("].seen")) or not seen:
            continue
        dataset = key[len("samples[") : -len("].seen")]
        share = counts.get(f"regions[{dataset}].ok", 0.0) / seen
        if share < share_floor:
            why = {
                f"{outcome}.{reason}": n
                for outcome in ("no_region", "failed")
                for reason, n in reasons(counts, f"regions[{dataset}]", outcome).items()
            }
            detail = ", ".join(f"{reason} {n:g}" for reason, n in sorted(why.items(), key=lambda kv: -kv[1]))
            alerts.append(
                f"localize: data set {dataset!r} has a region (a visual pair) for {share:.0%} of its {seen:g} samples "
                f"(below min_visual_share {share_floor:g}); the others: {detail or 'none'}. Name a model (run-level "
                f"`model:`) for attention regions, or set ingest.sources[].localize / localize.chain"
            )
    return alerts


def region_rows(regions: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The UI table: sample, status, region area %, confidence."""
    return [
        {
            "sample": row["sample_id"],
            "status": row["status"] if row["status"] == "ok" else f"{row['status']}: {row['reason']}",
            "area %": None if row["area_fraction"] is None else round(100 * row["area_fraction"], 2),
            "confidence": None if row["confidence"] is None else round(row["confidence"], 3),
        }
        for row in regions
    ]


def region_grid(ingest: Manifest, localize_manifest: Manifest, limit: int = GRID_SAMPLES) -> bytes | None:
    """original | mask for the first ``limit`` samples that got a region."""
    chosen = catalog.first_ok(localize_manifest, REGIONS, ["sample_id", "mask_path"], limit)
    if not chosen:
        return None
    images = catalog.values_of(ingest, SAMPLES, [r["sample_id"] for r in chosen], "image_path")
    folder = Path(localize_manifest.path)
    rows = [[load_array(images[r["sample_id"]]), load_array(folder / r["mask_path"])] for r in chosen]
    return ui.image_grid_png(rows, ["original", "mask"], [r["sample_id"] for r in chosen])


@task(**stage_task_options(STAGE, CODE))
def localize_task(store_root: str, config: LocalizeConfig, ingest: Manifest) -> Manifest:
    manifest = localize(ArtifactStore(store_root), config, ingest)
    ui.manifest_markdown(manifest)
    alert(STAGE, coverage_alerts(manifest))
    sources = "+".join(config.default_chain)
    shown = ["sample_id", "status", "reason", "area_fraction", "confidence"]
    regions = catalog.head(manifest, REGIONS, shown, ui.MAX_TABLE_ROWS)
    ui.table(f"{STAGE}-regions", region_rows(regions), f"{sources} regions per sample")
    grid = region_grid(ingest, manifest)
    if grid is not None:
        ui.image(f"{STAGE}-grid", grid, f"first {GRID_SAMPLES} regions (original | mask)")
    return manifest
