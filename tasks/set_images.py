"""A set version's images folder: each distinct image once, named by its content.

Filled by assembly (tasks/assemble.py) inside the build's temporary folder, which the store
renames into place whole; the layout is tasks/sets.py's.
"""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

from tasks.store import file_digest, link_or_copy, remember_digest
from tasks.store.packed import BLOBS


class ImageLinker:
    """Puts each distinct image into the set once, named by content; returns set-relative paths.

    Files of the store (noised images, rendered DICOM) never change, so they are hard-linked;
    a data root's files are copied: a sync that rewrites one in place (``cp`` keeps the inode)
    must not change a published set through a shared link. A data root's file that the set's
    previous version (``previous``: its images folder) holds with the same bytes is linked from
    there instead: a re-run's new version shares its unchanged images with its predecessor
    rather than copying the whole data root again, and still never links the data root.
    """

    def __init__(self, folder: Path, store_root: Path, previous: Path | None = None):
        self.folder = folder
        self.store_root = store_root.resolve()
        self.previous = previous
        # By the path as the pairs' rows spell it: a Path made per sample to look one up was a tenth of
        # a re-run's assembly.
        self.by_source: dict[str, str] = {}

    @property
    def count(self) -> int:
        return len(set(self.by_source.values()))

    def link(self, name: str) -> str:
        """The set-relative path of the image at ``name``, put into the set the first time."""
        if name not in self.by_source:
            source = Path(name)
            resolved = source.resolve()
            # A store blob is named by its content (tasks/store/packed.py) and checked whenever its
            # artifact is reused: reading every noised image again was most of a re-run's assembly
            # (linking a file changes its ctime, so the digest memo never knew a linked blob).
            blob = resolved.is_relative_to(self.store_root / BLOBS)
            digest = resolved.name[:64] if blob else file_digest(source)
            target = self.folder / f"{digest}{source.suffix.lower()}"
            if not target.exists():
                self.folder.mkdir(parents=True, exist_ok=True)
                if resolved.is_relative_to(self.store_root):
                    link_or_copy(source, target)
                elif not self.reused(target, digest):
                    shutil.copyfile(source, target)
                remember_digest(target, digest)
            self.by_source[name] = str(target.relative_to(self.folder.parent))
        return self.by_source[name]

    def reused(self, target: Path, digest: str) -> bool:
        """Linked ``target`` from the previous version's file of its name, when that file is a
        regular file still holding ``digest``'s bytes (a published file edited in place is not
        carried into the new version)."""
        if self.previous is None:
            return False
        earlier = self.previous / target.name
        try:
            if not stat.S_ISREG(earlier.lstat().st_mode) or file_digest(earlier) != digest:
                return False
            link_or_copy(earlier, target)
        except OSError:
            return False  # gone meanwhile, or unreadable: the data root's file is copied
        return True
