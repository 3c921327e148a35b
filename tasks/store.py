"""The artifact store: every stage output lives at ``<root>/<stage>/<key>/`` with a manifest.

The key is a content hash of (stage, stage code version, stage config, input keys), so an
unchanged re-run finds its outputs, a changed parameter recomputes that stage and, because
its key changes, everything downstream, while upstream keys stay put. A directory only
appears under its key once complete: stages write into a temporary sibling that is renamed
into place with the manifest already inside, so a killed run never leaves a half artifact
that a re-run would mistake for a finished one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol

from prefect.cache_policies import CachePolicy
from pydantic import BaseModel, ConfigDict

STAGES = ("ingest", "localize", "noise", "hallucinate", "score", "assemble", "train", "evaluate")
MANIFEST = "manifest.json"
KEY_LENGTH = 16


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
    """Hash of the source of the named modules (every .py file of a package).

    Hashing the source rather than trusting a hand-bumped number means an edited stage can
    never serve results computed by its older self.
    """
    digest = hashlib.sha256()
    for name in sorted(modules):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"code_version: no module named {name!r}")
        origin = Path(spec.origin)
        files = sorted(origin.parent.rglob("*.py")) if origin.name == "__init__.py" else [origin]
        for path in files:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


class Keyed(Protocol):
    key: str


class SourceSnapshot(BaseModel):
    """A stage input that is not an artifact: raw files, identified by a fingerprint."""

    model_config = ConfigDict(frozen=True)
    name: str
    key: str


class Manifest(BaseModel):
    """What a stage hands to the next one (and to Prefect): keys and paths, never data."""

    model_config = ConfigDict(frozen=True)
    stage: str
    key: str
    path: str
    inputs: dict[str, str]
    lineage: list[str]
    config: dict[str, Any]
    code_version: str
    counts: dict[str, float]
    files: list[str]
    created: str
    seconds: float

    def file(self, name: str) -> Path:
        if name not in self.files:
            raise FileNotFoundError(f"artifact {self.stage}/{self.key} has no file {name!r} (has {self.files})")
        return Path(self.path) / name


def stage_key(stage: str, code: str, config: BaseModel | Mapping[str, Any], inputs: Mapping[str, Keyed]) -> str:
    return content_hash(stage, code, config, {name: item.key for name, item in inputs.items()})


class StageFailed(RuntimeError):
    pass


class ArtifactStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    def directory(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str) -> Manifest | None:
        path = self.directory(stage, key) / MANIFEST
        if not path.is_file():
            return None
        return Manifest.model_validate_json(path.read_text())

    def list(self, stage: str) -> list[Manifest]:
        folder = self.root / stage
        found = (self.get(stage, p.name) for p in sorted(folder.iterdir()) if not p.name.startswith(".")) if folder.is_dir() else ()
        return sorted((m for m in found if m is not None), key=lambda m: m.created)

    def run(
        self,
        stage: str,
        code: str,
        config: BaseModel,
        inputs: Mapping[str, Keyed],
        build: Callable[[Path], Mapping[str, float]],
    ) -> Manifest:
        """Return the stored artifact for this key, or build it into a temp dir and publish it.

        ``build(out_dir)`` writes the stage's files and returns its counters.
        """
        key = stage_key(stage, code, config, inputs)
        cached = self.get(stage, key)
        if cached is not None:
            return cached
        final = self.directory(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=final.parent))
        started = time.perf_counter()
        try:
            counts = dict(build(tmp))
            manifest = Manifest(
                stage=stage,
                key=key,
                path=str(final),
                inputs={name: item.key for name, item in inputs.items()},
                lineage=_lineage(inputs),
                config=config.model_dump(mode="json"),
                code_version=code,
                counts=counts,
                files=sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()),
                created=datetime.now(timezone.utc).isoformat(timespec="microseconds"),
                seconds=round(time.perf_counter() - started, 3),
            )
            write_text_atomic(tmp / MANIFEST, manifest.model_dump_json(indent=2))
            try:
                os.rename(tmp, final)
            except OSError:
                # Another run published the same key first; its content is equivalent by construction.
                shutil.rmtree(tmp, ignore_errors=True)
                existing = self.get(stage, key)
                if existing is None:
                    raise
                return existing
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest


def _lineage(inputs: Mapping[str, Keyed]) -> list[str]:
    lineage: set[str] = set()
    for name, item in inputs.items():
        if isinstance(item, Manifest):
            lineage.add(f"{item.stage}/{item.key}")
            lineage.update(item.lineage)
        else:
            lineage.add(f"source:{name}/{item.key}")
    return sorted(lineage)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    write_bytes_atomic(path, text.encode())


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


class StageCachePolicy(CachePolicy):
    """Prefect cache key = the store key, so Prefect's "Cached" and the store agree.

    Prefect's INPUTS policy would hash pickled arguments and collide across stages with
    equal inputs; this one hashes exactly what the store hashes. A Prefect record whose
    artifact was deleted from the store is dropped, so Prefect never hands downstream
    stages a manifest pointing at files that are gone.
    """

    def __init__(self, stage: str, code: str):
        super().__init__()
        self.stage = stage
        self.code = code

    def compute_key(self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        store = ArtifactStore(inputs["store_root"])
        keyed = {name: value for name, value in inputs.items() if isinstance(getattr(value, "key", None), str)}
        key = stage_key(self.stage, self.code, inputs["config"], keyed)
        cache_key = f"{self.stage}-{key}"
        if store.get(self.stage, key) is None:
            _forget_prefect_record(task_ctx, cache_key)
        return cache_key


def _forget_prefect_record(task_ctx: Any, cache_key: str) -> None:
    result_store = getattr(task_ctx, "result_store", None)
    if result_store is None:
        return
    # Only local result storage is handled; remote storage keeps Prefect's own semantics.
    path = Path(result_store._resolved_key_path(cache_key))
    if path.is_absolute():
        path.unlink(missing_ok=True)


def stage_task_options(stage: str, code: str, **extra: Any) -> dict[str, Any]:
    """Options every stage's @task shares: its name, the store-keyed cache, persisted results."""
    return {
        "name": stage,
        "cache_policy": StageCachePolicy(stage, code),
        "persist_result": True,
        **extra,
    }


def safe_stem(text: str) -> str:
    """A file name for an id (sample ids hold ':' and '/'); the hash keeps it unique."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", text)[:60]
    return f"{readable}-{content_hash(text, length=8)}"
