"""Writing files so that readers never see a part: atomic replace, temp folders, links.

Temporary folders are named ``.tmp-<key>-<host>-<pid>-<random>``: a later run on the same
host can tell the ones a killed process left behind (its pid is gone) from ones still being
written, and never touches another host's (a Dask or Ray worker writing to a shared store).
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OWNER = f"{socket.gethostname()}-{os.getpid()}"
TEMP_PREFIX = ".tmp-"
# tempfile makes its folders 0700 and files 0600 whatever the umask; published artifacts must
# have the modes any other file would (a shared store is read by other users' workers). Read
# once at import: os.umask can only be read by setting it, which races with threads later on.
UMASK = os.umask(0o022)
os.umask(UMASK)


def temp_folder(parent: Path, key: str) -> Path:
    """A fresh temporary folder in ``parent`` (swept first of folders dead processes left)."""
    parent.mkdir(parents=True, exist_ok=True)
    sweep_abandoned(parent)
    folder = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{key}-{OWNER}-", dir=parent))
    folder.chmod(0o777 & ~UMASK)
    return folder


def sweep_abandoned(folder: Path) -> None:
    for path in abandoned(folder):
        shutil.rmtree(path, ignore_errors=True)


def abandoned(folder: Path) -> list[Path]:
    """The temporary folders in ``folder`` whose writing process (on this host) has died."""
    host = socket.gethostname()
    dead = []
    for path in folder.glob(f"{TEMP_PREFIX}*-{host}-*"):
        pid = path.name.split(f"-{host}-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            dead.append(path)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


@contextmanager
def replacing(path: Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write; renamed onto ``path`` when the block ends
    without an error, removed otherwise."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.fchmod(fd, 0o666 & ~UMASK)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


def write_if_changed(path: Path, data: bytes) -> bool:
    """Write only when the bytes differ from what is there (a rewrite of equal bytes would still
    disturb a file's time for every tool that looks at it); True when written."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    write_bytes_atomic(path, data)
    return True


def link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Hard link (no extra disk, same bytes); a copy across file systems or where links are refused."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
