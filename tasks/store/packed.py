"""The packed layout of the per-item cache: a few files per shard, not a folder per item.

A store holding MIMIC-CXR (370k images) in a folder per item, with every file linked again
into every artifact, is millions of files: slow on network and parallel file systems,
unworkable on object storage. So:

- a shard's item rows go into one Parquet file, ``<stage>/.items/rows/<hash>.parquet``
  (columns ``key`` and ``row``, the row as JSON), written atomically once the shard's items are
  all computed: a killed shard leaves no row behind, and no partial item;
- an item's files (masks, noised images) go once into the store-wide blob folder,
  ``.blobs/<2>/<sha256><suffix>``, named by content; equal images are stored once;
- a row names its files by their path from the artifact folder it is gathered into
  (``<root>/<stage>/<key>/`` is always two levels under the root), so readers join an
  artifact's folder and a row's path as they always did, and an artifact is its Parquet
  files and manifest alone.

A row is reused only while every blob it names is whole: present, a regular file and, when
small (tasks.store.verify.SMALL) or on a deep check (`mmedpo verify`), of the content its name
says. A damaged blob's items are computed again and the blob written anew.

A store written by the previous layout (``<stage>/.items/<2>/<key>/row.json``) is refused by
name with the command that converts it (tasks/store/migrate.py).
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from tasks.store.files import link_or_copy, replacing
from tasks.store.keys import content_hash, file_digest
from tasks.store.verify import SMALL

log = logging.getLogger(__name__)

ITEMS = ".items"
ROWS = "rows"
BLOBS = ".blobs"
# From an artifact folder <root>/<stage>/<key>/ (or its temporary sibling) to <root>/.blobs.
FROM_ARTIFACT = f"../../{BLOBS}"
ROW_SCHEMA = pa.schema([pa.field("key", pa.string(), nullable=False), pa.field("row", pa.string(), nullable=False)])
MIGRATE_COMMAND = "mmedpo store migrate --root {root}"
OLD_ITEM = re.compile(r"^[0-9a-f]{2}$")
T = TypeVar("T")


class OldStoreLayout(RuntimeError):
    """The store holds items in the previous layout: one command converts it."""


def rows_folder(root: str | os.PathLike[str], stage: str) -> Path:
    return Path(root) / stage / ITEMS / ROWS


def refuse_old_layout(root: str | os.PathLike[str], stage: str) -> None:
    if old_item_folders(Path(root) / stage):
        raise OldStoreLayout(
            f"{Path(root)}: the {stage} stage's item cache is in the previous layout (a folder per item); "
            f"run `{MIGRATE_COMMAND.format(root=Path(root))}` once to pack it"
        )


def old_item_folders(stage_dir: Path) -> list[Path]:
    folder = stage_dir / ITEMS
    if not folder.is_dir():
        return []
    return sorted(item for prefix in folder.iterdir() if OLD_ITEM.match(prefix.name) for item in prefix.iterdir())


def rows_files(root: str | os.PathLike[str], stage: str) -> dict[str, tuple[int, int, int]]:
    """A stage's rows files by name, each with what changes when it is replaced (inode, size, mtime)."""
    files = {}
    for path in rows_folder(root, stage).glob("*.parquet"):
        try:
            status = path.stat()
        except OSError:
            continue  # replaced or removed while listed: read as new
        files[path.name] = (status.st_ino, status.st_size, status.st_mtime_ns)
    return files


def read_index(
    root: str | os.PathLike[str],
    stage: str,
    origins: dict[str, str] | None = None,
    known: Set[str] = frozenset(),
    wanted: Set[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every packed row of ``stage`` by item key (and into ``origins``, when given, the name of the
    rows file each comes from), less the rows files named in ``known`` (read before: a build
    reads only what its shards added); only the keys in ``wanted`` when given (a build holds its
    own items' rows, not the whole stage's, which grows with every run on the store). A rows
    file that cannot be read whole (not Parquet, another schema, a row that is no JSON object) is
    skipped with a warning, and so is a row naming a blob that is gone or damaged: their items are
    computed again, never half-read."""
    index: dict[str, dict[str, Any]] = {}
    # Rows share blobs (one noised image for every question on it): each is checked once a read.
    problems: dict[str, str | None] = {}
    for path, rows in readable(root, stage, known, lambda path: read_rows(path, wanted)):
        for key, row in rows:
            if not damaged(root, path, key, blobs_named(row), problems):
                index[key] = row
                if origins is not None:
                    origins[key] = path.name
    return index


def read_table(
    root: str | os.PathLike[str],
    stage: str,
    schema: pa.Schema,
    known: Set[str] = frozenset(),
    wanted: Set[str] | None = None,
) -> pa.Table:
    """``read_index``'s rows as one Arrow table: columns ``key``, ``origin`` (the rows file's name)
    and ``schema``'s, the rows' JSON parsed straight into Arrow (a build's every row decoded to a
    Python dict was a stage's peak memory: ~3.7 KB a score row). Files and rows are skipped as
    ``read_index`` skips them; a row with a field ``schema`` lacks makes its file unreadable."""
    columns = pa.schema([*schema, pa.field("key", pa.string()), pa.field("origin", pa.string())])
    parts = [columns.empty_table()]
    problems: dict[str, str | None] = {}
    for path, (keys, data) in readable(root, stage, known, lambda path: parse_rows(path, schema, wanted)):
        named = blobs_in_columns(data)
        bad = [row for row, names in named.items() if damaged(root, path, keys[row].as_py(), names, problems)]
        data = data.append_column("key", keys).append_column("origin", pa.array([path.name] * len(keys), pa.string()))
        if bad:
            data = data.filter(pc.invert(pc.is_in(pa.array(range(data.num_rows)), pa.array(bad))))
        parts.append(data.cast(columns))
    return pa.concat_tables(parts)


def readable(
    root: str | os.PathLike[str], stage: str, known: Set[str], read: Callable[[Path], T]
) -> Iterator[tuple[Path, T]]:
    """Each rows file of ``stage`` (less those named in ``known``) as ``read`` reads it; one that
    cannot be read whole is skipped with a warning."""
    for path in sorted(rows_folder(root, stage).glob("*.parquet")):
        if path.name in known:
            continue
        try:
            found = read(path)
        except (OSError, ValueError, pa.ArrowException) as exc:
            log.warning("%s: unreadable item rows (%s); their items are computed again", path, exc)
            continue
        yield path, found


def damaged(
    root: str | os.PathLike[str], path: Path, key: str, names: Iterable[str], problems: dict[str, str | None]
) -> bool:
    """Whether a row names a blob that is gone or damaged (said as a warning); ``problems``
    remembers each blob's check across the rows of a read."""
    bad = False
    for name in names:
        if name not in problems:
            problems[name] = blob_problem(root, name)
        bad = bad or problems[name] is not None
    if bad:
        log.warning("%s: item %s names a blob that is gone or damaged; it is computed again", path, key)
    return bad


def wanted_rows(path: Path, wanted: Set[str] | None = None) -> pa.Table:
    """A rows file's (key, row) table, only the keys in ``wanted`` when given."""
    # The file itself, not pq.read_table's dataset machinery: that cost twice the read a file.
    table = pq.ParquetFile(path).read()
    if not table.schema.equals(ROW_SCHEMA):
        raise ValueError(f"columns {table.schema.names} are not the rows schema's")
    if wanted is not None:
        # The file's keys looked up in the set, not the set hashed into Arrow per file: that costs the
        # whole build's keys for every rows file (4.8 s a stage for 227k keys in 128 files, 0.08 s so).
        table = table.filter(pa.array([key in wanted for key in table.column("key").to_pylist()], pa.bool_()))
    return table


def read_rows(path: Path, wanted: Set[str] | None = None) -> list[tuple[str, dict[str, Any]]]:
    """A rows file's (key, row) pairs (those of the keys in ``wanted`` when given: the others are
    never decoded); raises when it cannot be read whole."""
    table = wanted_rows(path, wanted)
    keys = table.column("key").to_pylist()
    # One document for the file's rows: the decoder shares equal keys within a document, and each
    # row decoded alone held its own copy of every key (a score row's rounds: ~1 KB of ~3 KB).
    rows = json.loads(f"[{','.join(table.column('row').to_pylist())}]")
    if len(rows) != len(keys) or not all(isinstance(row, dict) for row in rows):
        raise ValueError("a row is no JSON object")
    return list(zip(keys, rows))


def parse_rows(path: Path, schema: pa.Schema, wanted: Set[str] | None = None) -> tuple[pa.ChunkedArray, pa.Table]:
    """A rows file's keys and its rows as a table of ``schema`` (those of the keys in ``wanted``
    when given), parsed by Arrow's JSON reader; raises when it cannot be read whole."""
    table = wanted_rows(path, wanted)
    keys = table.column("key")
    if not len(keys):
        return keys, schema.empty_table()
    strings = table.column("row").combine_chunks()
    # One newline-delimited document, joined in Arrow: a JSON row holds no raw newline.
    lines = pc.binary_join(pa.ListArray.from_arrays(pa.array([0, len(strings)], pa.int32()), strings), "\n")
    options = pj.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    data = pj.read_json(pa.BufferReader(lines[0].as_buffer()), parse_options=options)
    if data.num_rows != len(keys):
        raise ValueError(f"{data.num_rows} rows parsed from {len(keys)} JSON rows")
    return keys, data.select(schema.names).cast(schema)


def blobs_in_columns(data: pa.Table) -> dict[int, list[str]]:
    """The blobs the rows of ``data`` name in its string columns, by row number (``blobs_named``
    for a table: only the rows naming one become Python objects)."""
    named: dict[int, list[str]] = {}
    for column in data.itercolumns():
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        hits = pc.indices_nonzero(pc.fill_null(pc.starts_with(column, f"{FROM_ARTIFACT}/"), False))
        for row, value in zip(hits.to_pylist(), column.take(hits).to_pylist()):
            if is_blob_path(value):
                named.setdefault(row, []).append(value.removeprefix(f"{FROM_ARTIFACT}/"))
    return named


def blobs_named(row: Mapping[str, Any]) -> list[str]:
    """The blobs a row names, by their path under the blob folder."""
    return [v.removeprefix(f"{FROM_ARTIFACT}/") for v in row.values() if isinstance(v, str) and is_blob_path(v)]


def blob_problem(root: str | os.PathLike[str], name: str, deep: bool = False) -> str | None:
    """What is wrong with a blob (None: whole). Its name is its sha256, so its content is checked
    without an index: always when small, for any size when ``deep``."""
    path = Path(root) / BLOBS / name
    try:
        status = path.lstat()
    except OSError:
        return "missing"
    if not stat.S_ISREG(status.st_mode):
        return "not a regular file"
    if (deep or status.st_size <= SMALL) and file_digest(path) != Path(name).name[:64]:
        return "content differs from its name"
    return None


def write_rows(root: str | os.PathLike[str], stage: str, rows: Sequence[tuple[str, Mapping[str, Any]]]) -> Path:
    """One atomic Parquet file of (key, row) pairs, named by its keys (equal shards, one name)."""
    keys = [key for key, _ in rows]
    table = pa.table(
        {"key": keys, "row": [json.dumps(dict(row), default=json_value, ensure_ascii=False) for _, row in rows]},
        schema=ROW_SCHEMA,
    )
    path = rows_folder(root, stage) / f"{content_hash(keys)}.parquet"
    with replacing(path) as tmp:
        pq.write_table(table, tmp)
    return path


def pack_item(
    root: str | os.PathLike[str], folder: Path, row: Mapping[str, Any], ignore: Set[str] = frozenset()
) -> dict[str, Any]:
    """``row`` with each path of a file under ``folder`` (less the names in ``ignore``) replaced
    by its blob's path (the files are put into the blob folder, the item folder is left as it was)."""
    blobs = {}
    files = folder.rglob("*") if folder.is_dir() else ()  # an item that wrote no file has no folder
    for path in sorted(p for p in files if p.is_file()):
        name = path.relative_to(folder).as_posix()
        if name not in ignore:
            blobs[name] = put_blob(root, path)
    named = {value for value in row.values() if isinstance(value, str)}
    unnamed = sorted(set(blobs) - named)
    if unnamed:
        raise ValueError(f"item files {unnamed} are named by no column of their row")
    return {name: blobs.get(value, value) if isinstance(value, str) else value for name, value in row.items()}


def put_blob(root: str | os.PathLike[str], path: Path) -> str:
    """Store a file once by content; its path from an artifact folder."""
    digest = file_digest(path)
    relative = f"{digest[:2]}/{digest}{path.suffix.lower()}"
    target = Path(root) / BLOBS / relative
    if blob_problem(root, relative) is not None:
        with replacing(target) as tmp:
            os.unlink(tmp)
            link_or_copy(path, tmp)
    return f"{FROM_ARTIFACT}/{relative}"


def is_blob_path(path: str) -> bool:
    """A row's path of a blob: under the blob folder, without a way out of it."""
    rest = path.removeprefix(f"{FROM_ARTIFACT}/")
    return rest != path and ".." not in Path(rest).parts


def blob_index(folder: Path, strict: bool = False) -> dict[str, list]:
    """The blobs an artifact's tables name, as entries of its file index (tasks.store.verify) by
    their path from the artifact: verifying the artifact then checks them like its own files,
    so a damaged noised image or mask makes its artifact a miss, never a reused hit. A file that
    does not read as a table names no blob (a stage's own file named so), or, ``strict``, raises."""
    index: dict[str, list] = {}
    for table_path in sorted(folder.rglob("*.parquet")):
        try:
            table = pq.read_table(table_path)
        except (OSError, pa.ArrowException):
            if strict:
                raise
            continue
        for column in table.itercolumns():
            if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
                continue
            # Vectorized: a large table's other strings (ids, questions) never become Python objects.
            named = pc.unique(pc.filter(column, pc.starts_with(column, f"{FROM_ARTIFACT}/"))).to_pylist()
            for value in named:
                if value not in index and is_blob_path(value):
                    status = (folder / value).stat()
                    index[value] = [status.st_size, status.st_mtime_ns, Path(value).name[:64]]
    return index


def finished_items(root: str | os.PathLike[str], stage: str) -> int:
    """How many items of ``stage`` are packed (tests and tools count finished work with it)."""
    return len(read_index(root, stage))


def json_value(value: Any) -> Any:
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"item rows hold JSON values, got {type(value).__name__}")
