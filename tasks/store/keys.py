"""Identities: canonical JSON, content hashes, file digests (code versions: tasks.store.code).

Everything the store names is named by a hash of what defines it, so equal definitions
share a name and a changed one never reuses an old result.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

from pydantic import BaseModel

KEY_LENGTH = 16
# New digests a DigestMemo commits at once during a folder walk (a killed walk loses at most these).
MEMO_BATCH = 1024


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values hash equally."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def content_hash(*parts: Any, length: int = KEY_LENGTH) -> str:
    return hashed(*parts).hexdigest()[:length]


def hashed(*parts: Any, start: Any = None) -> Any:
    """The sha256 object of ``content_hash(*parts)``; after the parts ``start`` (a sha256 object,
    copied) hashed, when given: many keys with equal first parts (a stage's config) make their
    JSON once."""
    digest = hashlib.sha256() if start is None else start.copy()
    for part in parts:
        digest.update(canonical_json(part).encode())
        digest.update(b"\x00")
    return digest


_DIGESTS: dict[tuple[int, int, int, int, int], str] = {}


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a file's bytes, remembered within the process by (device, inode, size, mtime,
    ctime): a hard link of a file already read is not read again; a write is, also one whose
    old mtime was put back (nothing can set a ctime back)."""
    stat = os.stat(path)
    memo = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if memo not in _DIGESTS:
        _DIGESTS[memo] = _read_digest(path)
    return _DIGESTS[memo]


def remember_digest(path: str | os.PathLike[str], digest: str) -> None:
    """Record the digest of a file just copied or linked from one of that digest, so that hashing
    the artifact it joins does not read it again (a preference set's images were its build's
    largest read: every image, each build, right after it was copied)."""
    stat = os.stat(path)
    _DIGESTS[(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)] = digest


def _read_digest(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class DigestMemo:
    """Content digests of files and folders, remembered across runs in a SQLite file by
    (path, size, mtime, inode) - the way git's index avoids re-reading a work tree. An
    untouched multi-GB data root costs a stat per file; a touched-but-identical file costs one
    read and keeps its digest, so nothing downstream is recomputed for it."""

    def __init__(self, database: Path):
        database.parent.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.db = sqlite3.connect(database, check_same_thread=False, timeout=60)
        with self.lock, self.db:
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS digests (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER,"
                " inode INTEGER, sha256 TEXT)"
            )

    def file(self, path: Path) -> str:
        digest, fresh = self._lookup(path)
        if fresh:
            self._remember([fresh])
        return digest

    def tree(self, root: Path) -> str:
        """``tree_digest`` with this memo's file digests. New digests are written a batch per
        transaction, not one each: a commit waits for the disk (~80 ms on some), and a root that
        gained 2,000 images would otherwise spend minutes on commits alone."""
        fresh: list[tuple] = []

        def digest(path: Path) -> str:
            value, row = self._lookup(path)
            if row:
                fresh.append(row)
                if len(fresh) >= MEMO_BATCH:
                    self._remember(fresh)
                    fresh.clear()
            return value

        try:
            return tree_digest(root, digest)
        finally:
            self._remember(fresh)

    def _lookup(self, path: Path) -> tuple[str, tuple | None]:
        """A file's digest, and the row to remember it by when it was read (None: known)."""
        stat = path.stat()
        with self.lock:
            found = self.db.execute(
                "SELECT sha256 FROM digests WHERE path = ? AND size = ? AND mtime_ns = ? AND inode = ?",
                (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino),
            ).fetchone()
        if found:
            return found[0], None
        digest = _read_digest(path)
        return digest, (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, digest)

    def _remember(self, rows: list[tuple]) -> None:
        if rows:
            with self.lock, self.db:
                self.db.executemany("INSERT OR REPLACE INTO digests VALUES (?, ?, ?, ?, ?)", rows)


def tree_digest(root: str | os.PathLike[str], file: Any = None) -> str:
    """A file's digest, or a folder's: a hash over its entries' relative paths and digests
    (names and bytes matter, times and places do not); ``missing`` when nothing is there.
    ``file`` digests one regular file (default ``file_digest``, remembered within the process)."""
    digest_file = file or file_digest
    root = Path(root)
    if root.is_file():
        return content_hash("file", digest_file(root), length=64)
    if not root.is_dir():
        return "missing"
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]):
            path = Path(dirpath) / name
            entries.append((str(path.relative_to(root)), _entry(path, digest_file)))
    return content_hash("tree", entries, length=64)


def _entry(path: Path, digest_file: Any) -> str:
    """What a folder entry contributes. A link counts by where it points, never followed (it
    may leave the root, or be a FIFO's): ingestion resolves and refuses links that leave.
    Only regular files are read; a FIFO, socket or device is an entry by its kind."""
    try:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            return f"link:{os.readlink(path)}"
        if not stat.S_ISREG(mode):
            return f"special:{stat.S_IFMT(mode):o}"
        return digest_file(path)
    except OSError:
        return "unreadable"  # deleted meanwhile: an entry too, not a crash


_MEMOS: dict[Path, DigestMemo] = {}
_MEMOS_LOCK = threading.Lock()


def digest_memo(database: Path) -> DigestMemo:
    """One memo per database file and process."""
    with _MEMOS_LOCK:
        if database not in _MEMOS:
            _MEMOS[database] = DigestMemo(database)
        return _MEMOS[database]


def safe_stem(text: str) -> str:
    """A file name for an id (sample ids hold ':' and '/'); the hash keeps it unique."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60]
    return f"{readable}-{content_hash(text, length=8)}"
