"""Identities: canonical JSON, content hashes, code versions, file digests.

Everything the store names is named by a hash of what defines it, so equal definitions
share a name and a changed one never reuses an old result.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

KEY_LENGTH = 16
# Data files a package's behaviour depends on (prompt templates) count as its code.
CODE_SUFFIXES = (".py", ".txt")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values hash equally."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def content_hash(*parts: Any, length: int = KEY_LENGTH) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(canonical_json(part).encode())
        digest.update(b"\x00")
    return digest.hexdigest()[:length]


def code_version(*modules: str) -> str:
    """Hash of the source of the named modules (a package: every .py and .txt file in it).

    Hashing the source rather than trusting a hand-bumped number means an edited stage can
    never serve results computed by its older self.
    """
    digest = hashlib.sha256()
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"code_version: no module named {name!r}")
        origin = Path(spec.origin)
        if origin.name == "__init__.py":
            files = sorted(
                p for p in origin.parent.rglob("*") if p.suffix in CODE_SUFFIXES and "__pycache__" not in p.parts
            )
        else:
            files = [origin]
        for path in files:
            digest.update(str(path.relative_to(origin.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


_DIGESTS: dict[tuple[str, int, int], str] = {}


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes (memoised per path, size and mtime within the process)."""
    stat = os.stat(path)
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _DIGESTS:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _DIGESTS[memo] = digest.hexdigest()
    return _DIGESTS[memo]


def fingerprint_tree(root: Path) -> str:
    """Cheap identity of a raw data root: every file's relative path, size and mtime.

    New or edited files change it (re-curation picks them up); an untouched root keeps it,
    without reading gigabytes of images on every run.
    """
    if not root.is_dir():
        if not root.exists():
            return "missing"
        stat = root.stat()
        return content_hash([root.name, stat.st_size, stat.st_mtime_ns])
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(dirpath) / name
            try:
                stat = path.stat()
            except OSError:
                # A dangling symlink (or a file deleted meanwhile) is an entry too, not a crash:
                # ingestion rejects the rows that name it.
                entries.append((str(path.relative_to(root)), "unreadable"))
                continue
            entries.append((str(path.relative_to(root)), stat.st_size, stat.st_mtime_ns))
    return content_hash(entries)


def safe_stem(text: str) -> str:
    """A file name for an id (sample ids hold ':' and '/'); the hash keeps it unique."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60]
    return f"{readable}-{content_hash(text, length=8)}"
