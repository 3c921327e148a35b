"""Small ingest artifacts for stage tests: PNGs written with Pillow, a SAMPLES table, a real store run."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from tasks import catalog
from tasks.config import IngestConfig
from tasks.imaging import average_hash, save_array
from tasks.store import ArtifactStore, Manifest, content_hash


def write_image(path: Path, pixels: np.ndarray) -> Path:
    return save_array(pixels, path)


def sample_row(
    sample_id: str, image_path: Path, boxes: Sequence[Sequence[float]] = (), mask_path: Path | None = None, **extra: Any
) -> dict[str, Any]:
    """A SAMPLES row for an image on disk; size and hashes are read from the file.

    A path that is not a readable image (tests of failure handling) gets placeholder values.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(image_path) as image:
            width, height = image.size
            phash = average_hash(image)
        sha256 = hashlib.sha256(Path(image_path).read_bytes()).hexdigest()
    except (OSError, UnidentifiedImageError):
        width, height, phash, sha256 = 32, 32, "0" * 64, hashlib.sha256(sample_id.encode()).hexdigest()
    row = {
        "sample_id": sample_id,
        "dataset": "fixture",
        "split": "train",
        "task": "vqa",
        "image_path": str(Path(image_path).resolve()),
        "image_sha256": sha256,
        "image_phash": phash,
        "width": width,
        "height": height,
        "modality": "CT",
        "question": "Where is the lesion?",
        "answer": "Left lobe",
        "answer_type": "open",
        "boxes": [list(map(float, b)) for b in boxes],
        "box_labels": ["lesion"] * len(boxes),
        "mask_path": None if mask_path is None else str(Path(mask_path).resolve()),
        "other_images": [],
        "language": "en",
        "source_ref": f"fixture#{sample_id}",
    }
    row.update(extra)
    return row


def ingest_manifest(store: ArtifactStore, rows: Sequence[dict[str, Any]]) -> Manifest:
    """Publish ``rows`` as an ingest artifact (its key follows the rows, so fixtures never collide)."""

    def build(out: Path) -> dict[str, float]:
        catalog.write_file(out / "samples.parquet", catalog.SAMPLES, rows)
        return {"samples": float(len(rows))}

    return store.run("ingest", f"fixture-{content_hash(list(rows))}", IngestConfig(), {}, build)


# Defaults for evaluation fixtures: a closed, SLAKE-like test question.
EVAL_DEFAULTS = {
    "dataset": "slake",
    "split": "test",
    "question": "Is the lung healthy?",
    "answer": "No",
    "answer_type": "closed",
}


def write_random_image(path: Path, seed: int, size: int = 32) -> Path:
    return write_image(path, np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8))


def ingest_artifact(store: ArtifactStore, images: Path, specs: Sequence[dict[str, Any]]) -> Manifest:
    """One sample per spec (SAMPLES fields + ``sample_id``; EVAL_DEFAULTS for the rest), each with
    its own random image under ``images`` unless the spec gives ``image_path``."""
    rows = []
    for seed, spec in enumerate(specs):
        fields = {**EVAL_DEFAULTS, **spec}
        image = fields.pop("image_path", None) or write_random_image(images / f"{seed}.png", seed)
        rows.append(sample_row(fields.pop("sample_id"), Path(image), **fields))
    return ingest_manifest(store, rows)
