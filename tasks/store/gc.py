"""`mmedpo store gc`: the item rows files and blobs no artifact of the store uses any more.

Re-curation leaves item rows and blobs behind that no artifact was built from (an old config's
masks, a superseded model's rejections). What is live:

- every rows file an artifact's manifest names (``item_rows``: the files its items came from);
  a stage with an artifact written before manifests named them keeps all its rows files;
- every blob an artifact's tables name (its manifest's index, or its tables read when the
  manifest has no index), and every blob a live rows file names (so the kept item cache stays
  whole and reusable).

Everything else under ``<stage>/.items/rows/`` and ``.blobs/`` is garbage, except files younger
than ``min_age_s``: a run in progress writes rows and blobs before the manifest that names them.
A manifest that cannot be read, or a build in progress (it may be gathering old rows and blobs
that no manifest names yet), stops the collection before anything is deleted. Published sets hold their own links to
their files and are never affected.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from tasks.store.artifacts import read_manifest
from tasks.store.files import TEMP_PREFIX, abandoned, sweep_abandoned
from tasks.store.manifest import MANIFEST
from tasks.store.packed import BLOBS, FROM_ARTIFACT, blob_index, blobs_named, read_rows, rows_folder

MIN_AGE_S = 3600.0


class CollectionRefused(RuntimeError):
    """A run writing to the store, or a manifest whose references cannot be known: collecting now
    could delete what they use."""


@dataclass
class Garbage:
    """What no artifact uses: rows files and blobs, with their sizes in bytes."""

    rows: list[tuple[Path, int]] = field(default_factory=list)
    blobs: list[tuple[Path, int]] = field(default_factory=list)
    kept_stages: list[str] = field(default_factory=list)  # stages kept whole: an artifact predates item_rows

    @property
    def bytes(self) -> int:
        return sum(size for _, size in self.rows + self.blobs)


def collect(root: str | os.PathLike[str], delete: bool = False, min_age_s: float = MIN_AGE_S) -> Garbage:
    """The garbage under ``root`` (and with ``delete``, removed)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no store there")
    cutoff = time.time() - min_age_s
    garbage = Garbage()
    live_blobs: set[str] = set()
    stages = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    for stage_dir in stages:
        refuse_builds_in_progress(stage_dir, delete)
    for stage_dir in stages:
        named, recorded = artifact_references(stage_dir, live_blobs)
        folder = rows_folder(root, stage_dir.name)
        if not folder.is_dir():
            continue
        if not recorded:
            garbage.kept_stages.append(stage_dir.name)
        for path in sorted(folder.glob("*.parquet")):
            if not recorded or path.name in named or path.stat().st_mtime > cutoff:
                live_blobs.update(rows_blobs(path))
            else:
                garbage.rows.append((path, path.stat().st_size))
    blob_root = root / BLOBS
    for path in sorted(blob_root.glob("*/*")) if blob_root.is_dir() else []:
        name = path.relative_to(blob_root).as_posix()
        if name not in live_blobs and path.is_file() and path.stat().st_mtime <= cutoff:
            garbage.blobs.append((path, path.stat().st_size))
    # Only files whose folder really is in the store: a linked folder leads out of it.
    inside = root.resolve()
    garbage.rows = [(p, n) for p, n in garbage.rows if p.parent.resolve().is_relative_to(inside)]
    garbage.blobs = [(p, n) for p, n in garbage.blobs if p.parent.resolve().is_relative_to(inside)]
    if delete:
        for path, _ in garbage.rows + garbage.blobs:  # rows first: a stop midway leaves no row without its blob
            path.unlink(missing_ok=True)
    return garbage


def refuse_builds_in_progress(stage_dir: Path, delete: bool) -> None:
    """A build in progress may be gathering old rows and blobs no manifest names yet: refuse.
    Folders of builds whose process died are not in progress (removed only when deleting: a dry
    run changes nothing)."""
    if delete:
        sweep_abandoned(stage_dir)
    dead = set(abandoned(stage_dir))
    building = sorted(p for p in stage_dir.glob(f"{TEMP_PREFIX}*") if p not in dead)
    if building:
        raise CollectionRefused(
            f"{building[0]}: a build is in progress; run `mmedpo store gc` when no run writes to the store"
        )


def artifact_references(stage_dir: Path, blobs: set[str]) -> tuple[set[str], bool]:
    """The rows files a stage's artifacts name, and whether every artifact names them; the blobs
    they name are added to ``blobs``."""
    rows: set[str] = set()
    recorded = True
    for folder in sorted(p for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        try:
            manifest = read_manifest(folder / MANIFEST)
        except FileNotFoundError:
            continue  # not an artifact (a build in progress publishes its manifest last)
        except (OSError, ValueError) as exc:
            raise CollectionRefused(
                f"{folder / MANIFEST}: unreadable ({type(exc).__name__}); run `mmedpo verify --repair` first"
            ) from None
        try:
            # A manifest from before file indexes: its tables name its blobs, and one that cannot be
            # read might name blobs still in use, so nothing is collected rather than guessed.
            index = manifest.index or blob_index(folder, strict=True)
        except (OSError, pa.ArrowException) as exc:
            raise CollectionRefused(
                f"{folder}: a table is unreadable ({type(exc).__name__}); run `mmedpo verify --repair` first"
            ) from None
        blobs.update(name.removeprefix(f"{FROM_ARTIFACT}/") for name in index if name.startswith(f"{FROM_ARTIFACT}/"))
        if manifest.item_rows is None:
            recorded = False
        else:
            rows.update(manifest.item_rows)
    return rows, recorded


def rows_blobs(path: Path) -> list[str]:
    """The blobs a kept rows file names (an unreadable one names none: its items are recomputed)."""
    try:
        return [name for _, row in read_rows(path) for name in blobs_named(row)]
    except (OSError, ValueError, pa.ArrowException):
        return []
