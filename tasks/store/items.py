"""The per-item cache under every per-sample stage, and the shards it computes in.

A stage artifact's key names its whole input, so one new sample gives every per-sample stage
a new key. Underneath, each sample's result is cached as an *item* keyed by its content:
(stage, code, the item-relevant config, the sample's fields and upstream rows, with files
named by their content hash, never by their location inside an artifact folder, which moves
whenever an upstream key changes). A build then computes only the items it has never seen,
shard by shard, on whatever runs shards (``SHARDS``), and links the cached results into the
new artifact. Items are published like artifacts (temp folder, rename): a killed shard
leaves finished items behind and never a partial one.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks import counters, progress
from tasks.store.files import link_or_copy, temp_folder
from tasks.store.keys import content_hash, file_digest
from tasks.store.verify import damage, file_index, set_aside

ITEMS = ".items"
# Shards that call an external LLM endpoint carry this Prefect tag: a tag concurrency limit on it
# (`make ui` creates one) caps how many of them run at once across every flow run.
LLM_TAG = "llm-api"
ITEM_ROW = "row.json"
ITEM_INDEX = "index.json"  # the item's files as built (tasks.store.verify)
ITEM_KEY_LENGTH = 32


class StageFailed(RuntimeError):
    pass


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


def compute_items(
    store_root: str | os.PathLike[str], stage: str, items: Sequence[Item], compute: Compute
) -> dict[str, float]:
    """Compute and publish the items of one shard that are not cached yet; returns the
    compute function's counters.

    Runs wherever the shard runner puts it (a thread, a Dask or Ray worker): it needs only the
    store's file system.
    """
    todo = [item for item in items if not (item_folder(store_root, stage, item.key) / ITEM_ROW).is_file()]
    if not todo:
        return {}
    scratch = Path(store_root) / stage / ITEMS / ".tmp"
    folders = [temp_folder(scratch, item.key) for item in todo]
    try:
        rows, counts = compute([item.payload for item in todo], folders)
        rows = list(rows)
        progress.shard_done(stage, len(rows))
        if len(rows) != len(todo):
            raise StageFailed(f"{stage}: compute returned {len(rows)} rows for {len(todo)} items")
        for item, folder, row in zip(todo, folders, rows):
            (folder / ITEM_ROW).write_text(json.dumps(dict(row), default=_json_value, ensure_ascii=False))
            (folder / ITEM_INDEX).write_text(json.dumps(file_index(folder, skip=(ITEM_INDEX,))))
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


def inspect_item(folder: Path, deep: bool = False) -> list[str]:
    """What is wrong with a cached item (nothing: it is whole). An item without an index (cached
    before the store verified) is whole when its row reads."""
    try:
        index = json.loads((folder / ITEM_INDEX).read_bytes())
    except FileNotFoundError:
        index = None
    except (OSError, ValueError):
        return [f"{ITEM_INDEX}: unreadable"]
    if index is not None:
        return damage(folder, index, deep)
    try:
        json.loads((folder / ITEM_ROW).read_bytes())
    except FileNotFoundError:
        return [f"{ITEM_ROW}: missing"]
    except (OSError, ValueError):
        return [f"{ITEM_ROW}: unreadable"]
    return []


def _json_value(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"item rows hold JSON values, got {type(value).__name__}")


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
        total: dict[str, float] = {}
        for shard in job.shards:
            counters.merge(total, compute_items(job.store_root, job.stage, shard, job.compute))
        return total


# Who runs shards during a build; a flow sets a Prefect task runner here (tasks/runners.py).
SHARDS: ContextVar[Any] = ContextVar("mmedpo_shards", default=InlineShards())  # noqa: B039 - stateless
# The build (ArtifactStore.run) the item cache reports its work to: items computed and reused.
BUILD_WORK: ContextVar[dict[str, float] | None] = ContextVar("mmedpo_build_work", default=None)


class StageItems:
    """One stage's item cache under one config: item keys, and builds from cached items."""

    def __init__(self, root: str | os.PathLike[str], stage: str, code: str, identity: Mapping[str, Any]):
        self.root = Path(root)
        self.stage = stage
        self.code = code
        self.identity = identity  # what every item of this build shares (ArtifactStore.items)
        self.counts: dict[str, float] = {}  # the compute function's counters, summed over shards

    def item(self, content: Any, payload: Any) -> Item:
        key = content_hash("item", self.stage, self.code, self.identity, content, length=ITEM_KEY_LENGTH)
        return Item(key, payload)

    def build(
        self, out: Path, items: Sequence[Item], compute: Compute, tags: Sequence[str] = (), unit: str = "samples"
    ) -> list[dict[str, Any]]:
        """Result rows of ``items`` in order: cached ones reused, the rest computed in shards;
        every item's files linked into ``out`` at their artifact-relative paths. Progress lines
        in the terminal count ``unit`` (tasks.progress)."""
        damaged: list[str] = []
        missing = list({item.key: item for item in items if not self._done(item, damaged)}.values())
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
            progress.begin(self.stage, len(missing), job.reused, unit)
            try:
                counters.merge(self.counts, runner.run(job))
            finally:
                progress.finish(self.stage)
        work = BUILD_WORK.get()
        if work is not None:
            counters.merge(work, {"computed": len(missing), "reused": job.reused})
            if damaged:
                counters.merge(work, {"damaged": len(damaged)})
        return [self._gather(out, item) for item in items]

    def _done(self, item: Item, damaged: list[str]) -> bool:
        """Whether the item is cached and whole; a damaged one is set aside (and listed in
        ``damaged``) to be computed again."""
        folder = item_folder(self.root, self.stage, item.key)
        if not folder.exists():
            return False
        problems = inspect_item(folder)
        if problems:
            set_aside(folder, f"{self.stage} item {item.key}", problems)
            damaged.append(item.key)
        return not problems

    def _gather(self, out: Path, item: Item) -> dict[str, Any]:
        folder = item_folder(self.root, self.stage, item.key)
        row_file = folder / ITEM_ROW
        if not row_file.is_file():
            raise StageFailed(f"{self.stage}: item {item.key} was not computed (its shard failed)")
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path not in (row_file, folder / ITEM_INDEX):
                target = out / path.relative_to(folder)
                target.parent.mkdir(parents=True, exist_ok=True)
                if target.exists():
                    raise StageFailed(f"{self.stage}: two items write {target.relative_to(out)}")
                link_or_copy(path, target)
        return json.loads(row_file.read_text())
