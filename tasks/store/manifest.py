"""What a stage hands on: its manifest (keys, digests, lineage, config, counters, files), and
the key that names it.

Identity is content: a stage's key hashes its code, its config's identity and the *content
digests* of its inputs, never their keys or paths. A stage that reruns and produces the same
bytes leaves every downstream key unchanged (early cutoff, as Bazel's and Nix's
content-addressed outputs), and a source touched or copied afresh keeps its digest.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from tasks.config import StageConfig, identity, marker
from tasks.store.keys import DigestMemo, content_hash, file_digest
from tasks.store.packed import is_blob_path

MANIFEST = "manifest.json"


class Keyed(Protocol):
    key: str


class SourceSnapshot(BaseModel):
    """A stage input that is not an artifact (raw files, a model folder): its key is the
    digest of its content."""

    model_config = ConfigDict(frozen=True)
    name: str
    key: str


class Manifest(BaseModel):
    """What a stage hands to the next one (and to Prefect): keys and paths, never data."""

    # A counter may be NaN (a measure with nothing to measure): written as NaN, read back as NaN,
    # where JSON's null would make the manifest unreadable.
    model_config = ConfigDict(frozen=True, ser_json_inf_nan="constants")
    stage: str
    key: str
    path: str
    # The artifact's content: a hash over its files (the manifest and the stage's volatile files
    # - logs, timings - left out). Downstream keys hash this, not ``key``.
    digest: str = ""
    inputs: dict[str, str]
    input_digests: dict[str, str] = {}
    lineage: list[str]
    config: dict[str, Any]
    code_version: str
    counts: dict[str, float]
    files: list[str]
    # Each file's [size, mtime_ns, sha256] when built (tasks.store.verify): what a reader checks
    # before it reuses the artifact. Empty in manifests written before the store verified.
    index: dict[str, list] = {}
    created: str
    seconds: float
    # This process's CPU time over the build, all its threads (wall ``seconds`` also count waiting
    # for a busy machine); shards run in other processes (dask, ray) are not in it. None: older manifest.
    cpu_seconds: float | None = None
    run: str | None = None  # the Prefect flow run that produced it (name and id), when there was one
    # How the build went, not what it made: items computed vs reused from the item cache.
    work: dict[str, float] = {}
    # The item rows files (tasks/store/packed.py) its items were gathered from, by name under
    # <stage>/.items/rows/: what `mmedpo store gc` keeps. None: written before they were recorded.
    item_rows: list[str] | None = None

    def file(self, name: str) -> Path:
        """One of the artifact's files, or a blob its rows name (tasks/store/packed.py)."""
        if name not in self.files and not is_blob_path(name):
            raise FileNotFoundError(f"artifact {self.stage}/{self.key} has no file {name!r} (has {self.files})")
        return Path(self.path) / name


def identity_of(item: Keyed) -> str:
    """What an input contributes to a key: an artifact's content digest, a snapshot's key."""
    digest = getattr(item, "digest", "")
    return digest or item.key


def stage_key(stage: str, code: str, config: BaseModel | Mapping[str, Any], inputs: Mapping[str, Keyed]) -> str:
    return content_hash(
        stage, code, config_identity(config), {name: identity_of(item) for name, item in inputs.items()}
    )


def config_identity(config: BaseModel | Mapping[str, Any]) -> Any:
    return identity(config) if isinstance(config, BaseModel) else config


def content_inputs(config: BaseModel | Mapping[str, Any], memo: DigestMemo) -> dict[str, SourceSnapshot]:
    """A snapshot of every path the config marks as identified by content (``BY_CONTENT``,
    ``DATA_ROOT``: a file's whole folder), named by the field's dotted place in the config."""
    found: dict[str, SourceSnapshot] = {}

    def walk(value: Any, place: str) -> None:
        if isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f"{place}.{index}" if place else str(index))
            return
        if not isinstance(value, StageConfig):
            return
        for name, field in type(value).model_fields.items():
            dotted = f"{place}.{name}" if place else name
            current = getattr(value, name)
            kind = marker(field, "content")
            if kind and current is not None:
                path = Path(current)
                if kind == "data_root" and path.is_file():
                    path = path.parent
                found[dotted] = SourceSnapshot(name=dotted, key=memo.tree(path)[:16])
            else:
                walk(current, dotted)

    walk(config, "")
    return found


def artifact_digest(folder: Path, volatile: Sequence[str] = ()) -> str:
    """The content of a built artifact: every file but the manifest and ``volatile`` patterns."""
    entries = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = str(path.relative_to(folder))
        if relative == MANIFEST or any(fnmatch.fnmatch(relative, pattern) for pattern in volatile):
            continue
        entries.append((relative, file_digest(path)))
    return content_hash("artifact", entries)


def lineage(inputs: Mapping[str, Keyed]) -> list[str]:
    found: set[str] = set()
    for name, item in inputs.items():
        if isinstance(item, Manifest):
            found.add(f"{item.stage}/{item.key}")
            found.update(item.lineage)
        else:
            found.add(f"source:{name}/{item.key}")
    return sorted(found)
