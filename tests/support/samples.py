"""Small ingest artifacts (samples.parquet + real PNG images) for the tests of downstream stages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image

from tasks import schemas
from tasks.config import IngestConfig
from tasks.store import ArtifactStore, Manifest, content_hash


def sample_row(sample_id: str, image_path: Path, **fields: Any) -> dict[str, Any]:
    """A complete SAMPLES row; ``fields`` override the defaults (a closed SLAKE-like test question)."""
    row: dict[str, Any] = {
        "sample_id": sample_id,
        "dataset": "slake",
        "split": "test",
        "task": "vqa",
        "image_path": str(image_path),
        "image_sha256": content_hash(sample_id),
        "width": 32,
        "height": 32,
        "modality": "CT",
        "question": "Is the lung healthy?",
        "answer": "No",
        "answer_type": "closed",
        "boxes": [],
        "box_labels": [],
        "mask_path": None,
        "other_images": [],
        "language": "en",
        "source_ref": f"test.json#{sample_id}",
    }
    row.update(fields)
    return row


def write_image(path: Path, seed: int, size: int = 32) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


def ingest_artifact(store: ArtifactStore, images: Path, specs: Sequence[Mapping[str, Any]]) -> Manifest:
    """An `ingest` artifact holding one sample per spec (each spec: SAMPLES fields + ``sample_id``),
    each with its own random image under ``images`` unless the spec gives ``image_path``."""
    rows = []
    for seed, spec in enumerate(specs):
        fields = dict(spec)
        image = fields.pop("image_path", None) or write_image(images / f"{seed}.png", seed)
        rows.append(sample_row(fields.pop("sample_id"), Path(image), **fields))

    def build(out: Path) -> dict[str, float]:
        schemas.write_parquet(schemas.table(rows, schemas.SAMPLES), out / "samples.parquet")
        return {"samples": len(rows)}

    # The rows stand in for the ingest code version, so different sample sets get different keys.
    return store.run("ingest", content_hash(rows), IngestConfig(), {}, build)
