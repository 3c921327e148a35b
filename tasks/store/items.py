"""The per-item cache under every per-sample stage, and the shards it computes in.

A stage artifact's key names its whole input, so one new sample gives every per-sample stage
a new key. Underneath, each sample's result is cached as an *item* keyed by its content:
(stage, code, the item-relevant config, the sample's fields and upstream rows, with files
named by their content hash, never by their location inside an artifact folder, which moves
whenever an upstream key changes). A build then computes only the items it has never seen,
shard by shard, on whatever runs shards (``SHARDS``), and gathers the cached rows into the new
artifact. Items are stored packed (tasks/store/packed.py): a shard's rows in one Parquet file
written once the shard is done, their files once by content in the store's blob folder. A
killed shard leaves the finished shards' items behind and never a partial one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping, Sequence, Set
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from tasks import counters, progress
from tasks.store.files import temp_folder
from tasks.store.keys import file_digest, hashed
from tasks.store.packed import ITEMS, pack_item, read_index, read_table, refuse_old_layout, rows_files, write_rows

# Shards that call an external LLM endpoint carry this Prefect tag: a tag concurrency limit on it
# (`make ui` creates one) caps how many of them run at once across every flow run.
LLM_TAG = "llm-api"
ITEM_KEY_LENGTH = 32


class StageFailed(RuntimeError):
    pass


@dataclass(frozen=True)
class Item:
    """One unit of per-sample work: its content key and what the compute function needs."""

    key: str
    payload: Any


# compute(payloads, folders) -> (one result row per payload in order, counters of the work
# done, e.g. LLM requests). A row names each file it made by a path (e.g. ``masks/<stem>.png``);
# compute writes the file at that path under the item's folder (which it makes: it does not exist
# yet), and the shard stores it as a blob and puts the blob's path from the artifact into the row
# in its place.
Compute = Callable[[Sequence[Any], Sequence[Path]], tuple[Sequence[Mapping[str, Any]], Mapping[str, float]]]


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
    """Compute the items of one shard (the build's missing ones) and publish them together: their
    files as blobs, then their rows in one atomic Parquet file; returns the compute function's
    counters.

    Runs wherever the shard runner puts it (a thread, a Dask or Ray worker): it needs only the
    store's file system. Another run computing the same item at once publishes equal content.
    """
    if not items:
        return {}
    # One scratch folder a shard, swept (listed) once. The items' folders in it are made by what
    # writes a file there (most items write none: a made and removed empty folder per item was a
    # tenth of a re-run's time), and removed with it.
    shard = temp_folder(Path(store_root) / stage / ITEMS / ".tmp", items[0].key)
    folders = [shard / str(i) for i in range(len(items))]
    try:
        rows, counts = compute([item.payload for item in items], folders)
        rows = list(rows)
        progress.shard_done(stage, len(rows))
        if len(rows) != len(items):
            raise StageFailed(f"{stage}: compute returned {len(rows)} rows for {len(items)} items")
        try:
            packed = [(item.key, pack_item(store_root, folder, row)) for item, folder, row in zip(items, folders, rows)]
        except ValueError as exc:
            raise StageFailed(f"{stage}: {exc}") from None
        write_rows(store_root, stage, packed)
    finally:
        shutil.rmtree(shard, ignore_errors=True)
    return dict(counts)


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
    max_shards = 128
    workers = 1

    def run(self, job: ShardJob) -> dict[str, float]:
        total: dict[str, float] = {}
        for shard in job.shards:
            counters.merge(total, compute_items(job.store_root, job.stage, shard, job.compute))
        return total


# Who runs shards during a build; a flow sets a Prefect task runner here (tasks/runners.py).
SHARDS: ContextVar[Any] = ContextVar("mmedpo_shards", default=InlineShards())  # noqa: B039 - stateless
# The build (ArtifactStore.run) the item cache reports its work to: items computed and reused,
# and the rows files its items came from (its manifest's ``item_rows``).
BUILD_WORK: ContextVar[dict[str, float] | None] = ContextVar("mmedpo_build_work", default=None)
BUILD_ROWS: ContextVar[set[str] | None] = ContextVar("mmedpo_build_rows", default=None)


def shard_size(missing: int, smallest: int, most_shards: int, workers: int = 1) -> int:
    """Items per shard of a build: ``smallest``, or more where that would make more than
    ``most_shards`` shards, or fewer where that would leave one of ``workers`` idle. Each shard
    costs a task run (API calls, events, a future): a fixed shard size would make that cost grow
    with the build, a capped count keeps it flat; a small build (a re-run's new samples, a GPU
    stage's few hundred items) is still cut once per worker."""
    capped = -(-missing // max(1, most_shards))
    per_worker = -(-missing // max(1, workers))
    return max(1, min(max(smallest, capped), max(capped, per_worker)))


class StageItems:
    """One stage's item cache under one config: item keys, and builds from cached items."""

    def __init__(self, root: str | os.PathLike[str], stage: str, code: str, identity: Mapping[str, Any]):
        self.root = Path(root)
        self.stage = stage
        self.code = code
        self.identity = identity  # what every item of this build shares (ArtifactStore.items)
        self._shared = hashed("item", stage, code, identity)
        self.counts: dict[str, float] = {}  # the compute function's counters, summed over shards

    def item(self, content: Any, payload: Any) -> Item:
        key = hashed(content, start=self._shared).hexdigest()[:ITEM_KEY_LENGTH]
        return Item(key, payload)

    def build(
        self, out: Path, items: Sequence[Item], compute: Compute, tags: Sequence[str] = (), unit: str = "samples"
    ) -> list[dict[str, Any]]:
        """Result rows of ``items`` in order: cached ones reused, the rest computed in shards.
        A row names its files by their blob paths from ``out`` (tasks/store/packed.py). Progress
        lines in the terminal count ``unit`` (tasks.progress)."""
        wanted = {item.key for item in items}
        index: dict[str, dict[str, Any]] = {}

        def read(known: Set[str]) -> dict[str, str]:
            origins: dict[str, str] = {}
            index.update(read_index(self.root, self.stage, origins, known=known, wanted=wanted))
            return origins

        self._complete(items, compute, tags, unit, read)
        # Items several samples share (one noised image for every question on it) share a row: each
        # sample gets a dict of its own, the first one the index's (a copy of every row doubled the
        # build's peak memory).
        rows, taken = [], set()
        for item in items:
            row = index[item.key]
            rows.append(dict(row) if item.key in taken else row)
            taken.add(item.key)
        return rows

    def build_table(
        self,
        out: Path,
        items: Sequence[Item],
        compute: Compute,
        schema: pa.Schema,
        tags: Sequence[str] = (),
        unit: str = "samples",
    ) -> pa.Table:
        """``build``'s rows as a table of ``schema`` (each row's fields are its columns): parsed from
        the rows files into Arrow, never Python objects, for a stage whose every row at once would
        be its peak memory."""
        wanted = {item.key for item in items}
        parts: list[pa.Table] = []

        def read(known: Set[str]) -> dict[str, str]:
            parts.append(read_table(self.root, self.stage, schema, known=known, wanted=wanted))
            return dict(zip(parts[-1].column("key").to_pylist(), parts[-1].column("origin").to_pylist()))

        self._complete(items, compute, tags, unit, read)
        # Last read wins, as in ``read_index`` and the build's ``origins``: a rows file a shard rewrote
        # during the build is read twice, and ``index_in`` takes a key's first match.
        found = pa.concat_tables(parts)[::-1]
        positions = pc.index_in(pa.array([item.key for item in items], pa.string()), value_set=found.column("key"))
        return found.take(positions).drop_columns(["key", "origin"])

    def _complete(
        self,
        items: Sequence[Item],
        compute: Compute,
        tags: Sequence[str],
        unit: str,
        read: Callable[[Set[str]], Mapping[str, str]],
    ) -> None:
        """Compute the items no rows file holds, in shards. ``read(known)`` reads the stage's rows
        files but those named in ``known`` and returns the rows files of the items it found, by key."""
        refuse_old_layout(self.root, self.stage)
        listed = rows_files(self.root, self.stage)
        origins = dict(read(frozenset()))
        missing = list({item.key: item for item in items if item.key not in origins}.values())
        runner = SHARDS.get()
        size = shard_size(len(missing), runner.shard_size, runner.max_shards, runner.workers)
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
            # Rows files are named by their keys: only the shards' new ones are read, and any they
            # replaced (a shard recomputing the items of a damaged file writes a file of its name).
            unchanged = {
                name for name, identity in rows_files(self.root, self.stage).items() if listed.get(name) == identity
            }
            origins.update(read(unchanged))
        work, used = BUILD_WORK.get(), BUILD_ROWS.get()
        if work is not None:
            counters.merge(work, {"computed": len(missing), "reused": job.reused})
        if used is not None:
            used.update(origins[item.key] for item in items if item.key in origins)
        absent = sorted({item.key for item in items if item.key not in origins})
        if absent:
            raise StageFailed(f"{self.stage}: {len(absent)} items were not computed (their shard failed)")
