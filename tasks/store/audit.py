"""`mmedpo verify`: a whole store checked, every file of every artifact hashed, every packed
item rows file read and every blob hashed against its name (tasks/store/packed.py).

Published set versions are checked the same way (``audit_sets``). A stage folder is one
holding artifacts (``<key>/manifest.json``) or items (``.items/``); anything else at the top
(caches, the digest memo) is not the store's to judge. Under a stage
folder every visible sub-folder must be a whole artifact. ``repair`` sets each damaged
artifact, rows file or blob aside, so the next run recomputes it (nothing else is ever removed).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from tasks.store.artifacts import inspect_artifact
from tasks.store.manifest import MANIFEST
from tasks.store.packed import BLOBS, ITEMS, blob_problem, read_rows, rows_folder
from tasks.store.verify import set_aside


@dataclass(frozen=True)
class Finding:
    what: str  # "<stage>/<key>", "<stage> rows <file>" or "blob <name>"
    folder: Path
    problems: list[str]


def audit(root: Path, repair: bool = False) -> tuple[int, list[Finding]]:
    """(folders checked, what is damaged); with ``repair`` the damaged ones are set aside."""
    checked, found = 0, []
    for what, folder, problems in _checks(root):
        checked += 1
        if problems:
            found.append(Finding(what, folder, problems))
            if repair:
                set_aside(folder, what, problems)
    return checked, found


def _checks(root: Path) -> Iterator[tuple[str, Path, list[str]]]:
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: no store there")
    for stage in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not _is_stage(stage):
            continue
        for folder in sorted(p for p in stage.iterdir() if not p.name.startswith(".")):
            yield f"{stage.name}/{folder.name}", folder, inspect_artifact(folder, deep=True)[1]
        for path in sorted(rows_folder(root, stage.name).glob("*.parquet")):
            yield f"{stage.name} rows {path.name}", path, _rows_problems(path)
    for path in sorted((root / BLOBS).glob("??/*")):
        name = path.relative_to(root / BLOBS).as_posix()
        problem = blob_problem(root, name, deep=True)
        yield f"blob {name}", path, [problem] if problem else []


def _rows_problems(path: Path) -> list[str]:
    try:
        read_rows(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        return [f"unreadable ({exc})"]
    return []


def _is_stage(folder: Path) -> bool:
    return (folder / ITEMS).is_dir() or any((p / MANIFEST).is_file() for p in folder.iterdir())


def audit_sets(sets_root: Path, repair: bool = False) -> tuple[int, list[Finding]]:
    """Every published set version checked like an artifact (its manifest is the assemble one)."""
    checked, found = 0, []
    for folder in sorted(p for p in sets_root.glob("*/*") if p.is_dir() and not p.name.startswith(".")):
        checked += 1
        problems = inspect_artifact(folder, deep=True)[1]
        if problems:
            what = f"set {folder.parent.name}@{folder.name}"
            found.append(Finding(what, folder, problems))
            if repair:
                set_aside(folder, what, problems)
    return checked, found
