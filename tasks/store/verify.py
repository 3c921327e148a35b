"""Whether a folder on disk (an artifact, an item, a published set) holds the files its index says.

An index maps each file's path (relative to the folder) to ``[size, mtime_ns, sha256]``, taken
when the folder was built. Checking a file costs a stat: its size must match; its content is
hashed again when the file is small (``SMALL``), when its time changed (an edit in place) or
when the check is ``deep`` (``mmedpo verify``). A big file rewritten in place with its old time
restored is only caught by a deep check.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from tasks.store.keys import file_digest

# Files up to this size are hashed on every read: metadata tables, rows, small images.
SMALL = 1 << 20
DAMAGED = ".damaged-"

Index = dict[str, list]
log = logging.getLogger("mmedpo.store")


def file_index(folder: Path, skip: Collection[str] = ()) -> Index:
    """Every regular file under ``folder`` but those named in ``skip``: its size, time and digest."""
    index: Index = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = str(path.relative_to(folder))
        if relative not in skip:
            stat = path.stat()
            index[relative] = [stat.st_size, stat.st_mtime_ns, file_digest(path)]
    return index


def damage(folder: Path, index: Mapping[str, Sequence], deep: bool = False) -> list[str]:
    """What differs from the index, one phrase per file ('' list: whole)."""
    problems = []
    for relative, (size, mtime_ns, digest) in sorted(index.items()):
        path = folder / relative
        try:
            stat = path.lstat()
        except OSError:
            problems.append(f"{relative}: missing")
            continue
        if not path.is_file():
            problems.append(f"{relative}: not a regular file")
        elif stat.st_size != size:
            problems.append(f"{relative}: {stat.st_size} bytes, built with {size}")
        elif (deep or size <= SMALL or stat.st_mtime_ns != mtime_ns) and file_digest(path) != digest:
            problems.append(f"{relative}: content differs from when it was built")
    return problems


def set_aside(folder: Path, what: str, problems: Sequence[str]) -> None:
    """Take a damaged folder out of the store (so it is rebuilt, never reused), and say so.

    Renamed first, then removed: a reader never sees a half-deleted folder under its name, and
    hard links that published sets share with it keep their own copy of each file."""
    shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
    log.warning("store: %s is damaged (%s): recomputing it", what, shown)
    aside = Path(tempfile.mkdtemp(prefix=f"{DAMAGED}{folder.name}-", dir=folder.parent))
    try:
        os.rename(folder, aside / folder.name)
    except FileNotFoundError:
        pass  # another run set it aside first
    shutil.rmtree(aside, ignore_errors=True)
