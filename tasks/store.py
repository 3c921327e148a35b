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
import socket
import tempfile
import time
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from prefect.cache_policies import CachePolicy
from pydantic import BaseModel, ConfigDict

from tasks.config import identity

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
    # How the build went, not what it made: items computed vs reused from the item cache.
    work: dict[str, float] = {}

    def file(self, name: str) -> Path:
        if name not in self.files:
            raise FileNotFoundError(f"artifact {self.stage}/{self.key} has no file {name!r} (has {self.files})")
        return Path(self.path) / name


def stage_key(stage: str, code: str, config: BaseModel | Mapping[str, Any], inputs: Mapping[str, Keyed]) -> str:
    return content_hash(stage, code, _identity(config), {name: item.key for name, item in inputs.items()})


def _identity(config: BaseModel | Mapping[str, Any]) -> Any:
    return identity(config) if isinstance(config, BaseModel) else config


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
        sweep_abandoned(final.parent)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-{OWNER}-", dir=final.parent))
        started = time.perf_counter()
        work: dict[str, float] = {}
        token = _BUILD_WORK.set(work)
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
                work=work,
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
        finally:
            _BUILD_WORK.reset(token)
        return manifest

    def items(self, stage: str, code: str, config: BaseModel | Mapping[str, Any]) -> "StageItems":
        """The per-item cache of one stage under ``config`` (see StageItems)."""
        return StageItems(self.root, stage, code, config)


# --- per-item caching ------------------------------------------------------------------------
#
# A stage artifact's key names its whole input, so one new sample gives every per-sample stage
# a new key. Underneath, each sample's result is cached as an *item* keyed by its content:
# (stage, code, the item-relevant config, the sample's fields and upstream rows, with files
# named by their content hash, never by their location inside an artifact folder, which moves
# whenever an upstream key changes). A build then computes only the items it has never seen,
# shard by shard, on whatever runs shards (SHARDS), and links the cached results into the
# new artifact. Items are published like artifacts (temp folder, rename): a killed shard
# leaves finished items behind and never a partial one.

ITEMS = ".items"
# Shards that call an external LLM endpoint carry this Prefect tag: a tag concurrency limit on it
# (`make ui` creates one) caps how many of them run at once across every flow run.
LLM_TAG = "llm-api"
ITEM_ROW = "row.json"
ITEM_KEY_LENGTH = 32


@dataclass(frozen=True)
class Item:
    """One unit of per-sample work: its content key and what the compute function needs."""

    key: str
    payload: Any


# compute(payloads, folders) -> (one result row per payload in order, counters of the work
# done, e.g. LLM requests). A row names its files by their path relative to the artifact
# (e.g. ``masks/<stem>.png``); compute writes each file at that path under the item's folder,
# and the build links it to the same path in the artifact.
Compute = Callable[[Sequence[Any], Sequence[Path]], tuple[Sequence[Mapping[str, Any]], Mapping[str, float]]]


def item_folder(root: str | os.PathLike[str], stage: str, key: str) -> Path:
    return Path(root) / stage / ITEMS / key[:2] / key


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


def by_content(row: Mapping[str, Any], fields: Sequence[str], files: Mapping[str, Path | None] = {}) -> dict[str, Any]:
    """An item's identity from a row: the named fields, plus each file column as its content
    hash (``files`` maps a column to the folder its relative paths are in; None: absolute)."""
    content = {name: row.get(name) for name in fields}
    for column, base in files.items():
        value = row.get(column)
        if value:
            path = Path(value) if base is None else Path(base) / value
            content[column] = f"sha256:{file_digest(path)}" if path.is_file() else f"missing:{path.name}"
        else:
            content[column] = None
    return content


def _json_value(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"item rows hold JSON values, got {type(value).__name__}")


def compute_items(store_root: str | os.PathLike[str], stage: str, items: Sequence[Item], compute: Compute) -> dict[str, float]:
    """Compute and publish the items of one shard that are not cached yet; returns the
    compute function's counters.

    Runs wherever the shard runner puts it (a thread, a Dask or Ray worker): it needs only the
    store's file system.
    """
    todo = [item for item in items if not (item_folder(store_root, stage, item.key) / ITEM_ROW).is_file()]
    if not todo:
        return {}
    scratch = Path(store_root) / stage / ITEMS / ".tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    sweep_abandoned(scratch)
    folders = [Path(tempfile.mkdtemp(prefix=f".tmp-{item.key}-{OWNER}-", dir=scratch)) for item in todo]
    try:
        rows, counts = compute([item.payload for item in todo], folders)
        rows = list(rows)
        if len(rows) != len(todo):
            raise StageFailed(f"{stage}: compute returned {len(rows)} rows for {len(todo)} items")
        for item, folder, row in zip(todo, folders, rows):
            (folder / ITEM_ROW).write_text(json.dumps(dict(row), default=_json_value, ensure_ascii=False))
            final = item_folder(store_root, stage, item.key)
            final.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(folder, final)
            except OSError:
                if not (final / ITEM_ROW).is_file():
                    raise
                # Another shard published this item first; equal content by construction.
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)
    return dict(counts)


def add_counts(total: dict[str, float], more: Mapping[str, float]) -> dict[str, float]:
    for name, value in more.items():
        total[name] = total.get(name, 0) + value
    return total


@dataclass(frozen=True)
class ShardJob:
    """The missing items of one stage build, cut into shards, for a shard runner."""

    store_root: str
    stage: str
    shards: list[list[Item]]
    compute: Compute
    tags: tuple[str, ...]
    total: int  # items of the build, cached ones included (for progress)
    reused: int


class InlineShards:
    """Shards one after another in this process: plain function calls, tests, the CLI without a flow."""

    shard_size = 64

    def run(self, job: ShardJob) -> dict[str, float]:
        counts: dict[str, float] = {}
        for shard in job.shards:
            add_counts(counts, compute_items(job.store_root, job.stage, shard, job.compute))
        return counts


# Who runs shards during a build; a flow sets a Prefect task runner here (tasks/runners.py).
SHARDS: ContextVar[Any] = ContextVar("mmedpo_shards", default=InlineShards())
_BUILD_WORK: ContextVar[dict[str, float]] = ContextVar("mmedpo_build_work", default={})


class StageItems:
    """One stage's item cache under one config: item keys, and builds from cached items."""

    def __init__(self, root: str | os.PathLike[str], stage: str, code: str, config: BaseModel | Mapping[str, Any]):
        self.root = Path(root)
        self.stage = stage
        self.code = code
        self.config = config
        self.counts: dict[str, float] = {}  # the compute function's counters, summed over shards

    def item(self, content: Any, payload: Any) -> Item:
        return Item(content_hash("item", self.stage, self.code, _identity(self.config), content, length=ITEM_KEY_LENGTH), payload)

    def build(self, out: Path, items: Sequence[Item], compute: Compute, tags: Sequence[str] = ()) -> list[dict[str, Any]]:
        """Result rows of ``items`` in order: cached ones reused, the rest computed in shards;
        every item's files linked into ``out`` at their artifact-relative paths."""
        missing = list({item.key: item for item in items if not (item_folder(self.root, self.stage, item.key) / ITEM_ROW).is_file()}.values())
        runner = SHARDS.get()
        size = max(1, int(runner.shard_size))
        job = ShardJob(
            store_root=str(self.root),
            stage=self.stage,
            shards=[missing[i : i + size] for i in range(0, len(missing), size)],
            compute=compute,
            tags=tuple(tags),
            total=len(items),
            reused=len(items) - len(missing),
        )
        if job.shards:
            add_counts(self.counts, runner.run(job))
        work = _BUILD_WORK.get()
        work["computed"] = work.get("computed", 0.0) + len(missing)
        work["reused"] = work.get("reused", 0.0) + job.reused
        return [self._gather(out, item) for item in items]

    def _gather(self, out: Path, item: Item) -> dict[str, Any]:
        folder = item_folder(self.root, self.stage, item.key)
        row_file = folder / ITEM_ROW
        if not row_file.is_file():
            raise StageFailed(f"{self.stage}: item {item.key} was not computed (its shard failed)")
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path != row_file:
                target = out / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    raise StageFailed(f"{self.stage}: two items write {target.relative_to(out)}")
                link_or_copy(path, target)
        return json.loads(row_file.read_text())


def _lineage(inputs: Mapping[str, Keyed]) -> list[str]:
    lineage: set[str] = set()
    for name, item in inputs.items():
        if isinstance(item, Manifest):
            lineage.add(f"{item.stage}/{item.key}")
            lineage.update(item.lineage)
        else:
            lineage.add(f"source:{name}/{item.key}")
    return sorted(lineage)


# Temporary folders are named .tmp-<key>-<host>-<pid>-<random>: a later run on the same host can
# tell the ones a killed process left behind (its pid is gone) from ones still being written,
# and never touches another host's (a Dask or Ray worker writing to a shared store).
OWNER = f"{socket.gethostname()}-{os.getpid()}"


def sweep_abandoned(folder: Path) -> None:
    host = socket.gethostname()
    for path in folder.glob(f".tmp-*-{host}-*"):
        pid = path.name.split(f"-{host}-", 1)[1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def link_or_copy(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Hard link (no extra disk, same bytes); a copy across file systems or where links are refused."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


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
