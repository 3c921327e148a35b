"""Image checks, and their cache across ingestion runs.

A new record in a data root gives ingestion a new key, but its images have not changed: each
file's check (a full decode, its hashes, its size) is kept as a store item keyed by the file's
content digest (the store's digest memo: a stat for an untouched file, one read for a touched
one), so re-curating a large root decodes only new images. In a flow the missing checks run as
shards on the run's task runner like any per-sample stage.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from tasks.config import IngestConfig
from tasks.imaging import ImageError, ImageInfo, inspect_image
from tasks.store import ArtifactStore, code_version

CHECK_CODE = code_version("tasks.imaging")
DECODE_THREADS = 4  # Pillow's decoders release the GIL

Checked = dict[Path, ImageInfo | ImageError]
Checker = Callable[[set[Path], IngestConfig], Checked]


def inspect_all(paths: set[Path], config: IngestConfig) -> Checked:
    """Decode every image once, in a thread pool."""

    def check(path: Path) -> ImageInfo | ImageError:
        try:
            return inspect_image(path, config.max_image_pixels, config.min_image_side)
        except ImageError as exc:
            return exc

    ordered = sorted(paths)
    with ThreadPoolExecutor(DECODE_THREADS) as pool:
        return dict(zip(ordered, pool.map(check, ordered)))


def _check_items(
    config: IngestConfig, payloads: Sequence[str], folders: Sequence[Path]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    checked = inspect_all({Path(p) for p in payloads}, config)
    rows = []
    for payload in payloads:
        result = checked[Path(payload)]
        rows.append(
            {"reason": result.reason, "detail": result.detail} if isinstance(result, ImageError) else asdict(result)
        )
    return rows, {}


def _from_row(row: dict[str, Any]) -> ImageInfo | ImageError:
    return ImageError(row["reason"], row["detail"]) if "reason" in row else ImageInfo(**row)


def cached_checker(store: ArtifactStore, stage: str, config: IngestConfig, out: Path) -> Checker:
    """A checker whose results outlive the build; files written under ``out`` (rendered DICOM,
    embedded images) are checked directly, since their paths are new in every build."""
    items = store.items(
        stage, CHECK_CODE, {"max_image_pixels": config.max_image_pixels, "min_image_side": config.min_image_side}
    )

    def check(paths: set[Path], config: IngestConfig) -> Checked:
        fresh = {p for p in paths if p.is_relative_to(out)}
        results = inspect_all(fresh, config)
        cached = sorted(paths - fresh)
        work = [items.item({"sha256": store.digests.file(path)}, str(path)) for path in cached]
        rows = items.build(out, work, partial(_check_items, config), unit="image files")
        results.update({path: _from_row(row) for path, row in zip(cached, rows)})
        return results

    return check
