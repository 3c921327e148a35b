"""Preference sets as published data sets: where they live, how to find and read them.

A set version is the `assemble` artifact hard-linked to ``<sets>/<name>/<version>/``
(version = the artifact's content digest: the same pairs, weights and images are one version,
however and whenever they were curated). Layout:

    data/<split>-00000-of-00001.parquet   pairs (catalog.PAIRS); image paths relative to the version folder
    images/<sha256>.<ext>                 every chosen / rejected image, once
    dropped.parquet, CARD.md, manifest.json

Shared by assembly (publishing), training (reading) and the CLI (listing).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tasks.catalog import PAIRS, read_file
from tasks.config import plain_name
from tasks.store import Manifest, file_digest, link_or_copy, remember_digest, write_text_atomic
from tasks.store.artifacts import inspect_artifact
from tasks.store.verify import set_aside

LATEST = "LATEST"  # <sets>/<name>/LATEST: the version the name's last curation published


def publish(manifest: Manifest, sets_root: Path, name: str) -> Path:
    """Hard-link the assemble artifact to <sets_root>/<name>/<version>/ (atomic, idempotent) and
    make it the name's latest version, also when that version was published before (a curation
    that came back to an earlier content). A published version that is no longer whole (a file
    edited or deleted) is replaced by the artifact's files."""
    plain_name(name)
    final = sets_root / name / version(manifest)
    if final.is_dir():
        problems = inspect_artifact(final)[1]
        if problems:
            set_aside(final, f"set {name}@{final.name}", problems)
    if not final.is_dir():
        link_version(manifest, final)
    write_text_atomic(final.parent / LATEST, f"{final.name}\n")
    return final


def link_version(manifest: Manifest, final: Path) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(manifest.path, tmp, copy_function=link_known)
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not final.is_dir():
            raise


def link_known(source: str, target: str) -> None:
    """``link_or_copy``, the digest memo told the linked file's digest: a link changes the file's
    ctime, which the memo keys on, and the set's next version checks every image it takes from
    this one by its digest (tasks/set_images.py): each was read again, every re-run."""
    digest = file_digest(source)
    link_or_copy(source, target)
    remember_digest(target, digest)


def version(manifest: Manifest) -> str:
    """A set's version: the assemble artifact's content digest."""
    return manifest.digest


def latest_images(sets_root: Path, name: str) -> Path | None:
    """The images folder of the name's latest published version (None before its first): the
    images a new version of the name links instead of copying them (tasks.set_images)."""
    try:
        images = resolve_set(sets_root, name) / "images"
    except (OSError, ValueError):  # none yet, or a damaged published set: the new version copies instead
        return None
    return images if images.is_dir() else None


def list_sets(sets_root: Path) -> list[Manifest]:
    """Every published version, oldest first; ``path`` is where it is published."""
    if not sets_root.is_dir():
        return []
    found = []
    for manifest_path in sorted(sets_root.glob("*/*/manifest.json")):
        if not manifest_path.parent.name.startswith("."):
            manifest = Manifest.model_validate_json(manifest_path.read_text())
            found.append(manifest.model_copy(update={"path": str(manifest_path.parent)}))
    return sorted(found, key=lambda m: m.created)


def resolve_set(sets_root: Path, ref: str) -> Path:
    """NAME (its latest version) or NAME@VERSION -> the version folder, or a clear error."""
    name, _, version = ref.partition("@")
    latest = sets_root / name / LATEST
    if not version and latest.is_file():
        # A version name, one folder inside the set's: a LATEST naming a path elsewhere is not followed.
        named = latest.read_text().strip()
        if named not in ("", ".", "..") and Path(named).name == named and (sets_root / name / named).is_dir():
            return sets_root / name / named
    published = list_sets(sets_root)
    candidates = [Path(m.path) for m in published if Path(m.path).parent.name == name]
    if version:
        candidates = [p for p in candidates if p.name == version]
    if not candidates:
        known = sorted({f"{Path(m.path).parent.name}@{Path(m.path).name}" for m in published})
        raise FileNotFoundError(
            f"no preference set {ref!r} under {sets_root} (published: {', '.join(known) or 'none'})"
        )
    return candidates[-1]


def load_pairs(location: Path, split: str | None = None, columns: Sequence[str] | None = None) -> pa.Table:
    """Pairs with absolute image paths, from a set version folder or from one Parquet file
    (whose relative image paths are taken relative to the file's folder). ``columns`` names the
    columns the caller needs (a hand-made Parquet file may hold only those)."""
    if location.is_dir():
        files = sorted(location.glob(PAIRS.file.format(split=split or "*")))
        base = location
    else:
        files, base = [location], location.parent
    if not files:
        raise FileNotFoundError(f"{location}: no pairs{' for split ' + split if split else ''}")
    data = pa.concat_tables([read_file(f, PAIRS, columns) for f in files])
    if split is not None:
        data = data.filter(pc.equal(data["split"], split))
    for column in ("chosen_image", "rejected_image"):
        absolute = [str(base / p) for p in data[column].to_pylist()]  # base / absolute path = the absolute path
        data = data.set_column(data.schema.get_field_index(column), column, pa.array(absolute, pa.string()))
    return data


def to_trl_records(location: Path, split: str = "train") -> Iterable[dict[str, Any]]:
    """TRL's conversational vision preference format (``images``, ``prompt``, ``chosen``,
    ``rejected``), plus ``rejected_images`` and ``weight`` for the weighted trainer."""
    from PIL import Image

    for pair in load_pairs(location, split).to_pylist():
        yield {
            "images": [Image.open(pair["chosen_image"]).convert("RGB")],
            "rejected_images": [Image.open(pair["rejected_image"]).convert("RGB")],
            "prompt": [{"role": "user", "content": pair["prompt"]}],
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}],
            "weight": pair["weight"],
            "pair_type": pair["pair_type"],
            "pair_id": pair["pair_id"],
        }
