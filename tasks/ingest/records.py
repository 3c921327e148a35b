"""What every format reader yields: raw records (not yet checked) or rejects.

Readers only parse their format; checking images, normalizing answers, languages and
duplicates happens once, in ``tasks.ingest.normalize``, the same way for every format.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class IngestError(ValueError):
    """A whole input is unusable (e.g. an annotation file that is not JSON): the message names the file."""


class RecordError(ValueError):
    """One record is unusable; ``reason`` is a short countable code, the message names the field."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class RawRecord:
    native_id: str
    split: str
    task: str  # vqa | report
    image: Path | bytes  # a path (relative to the data root or absolute) or embedded bytes
    question: str
    answer: Any  # normalized to a string later: real files put numbers here
    source_ref: str
    answer_type: Any = None
    modality: str | None = None
    language: str | None = None
    boxes: list[list[float]] = field(default_factory=list)  # [x0, y0, x1, y1]
    box_labels: list[str] = field(default_factory=list)
    mask: Path | None = None
    other_images: list[Path] = field(default_factory=list)


@dataclass
class Reject:
    source_ref: str
    reason: str
    detail: str
    native_id: str | None = None


Item = RawRecord | Reject
ReaderOutput = Iterator[Item]


def read_regular(path: Path) -> bytes:
    """An annotation file's bytes. Only a regular file is opened: a FIFO (or a link to
    /dev/zero) would block or never end, and a run must not hang on one."""
    try:
        _require_regular(path)
        return path.read_bytes()
    except OSError as exc:
        raise IngestError(f"{path}: cannot read annotation file: {exc}") from exc


def regular_lines(path: Path) -> Iterator[bytes]:
    """An annotation file's lines, each with its newline, read as they are taken: a large file
    is never held whole. Opened as ``read_regular`` opens."""
    try:
        _require_regular(path)
        with path.open("rb") as handle:
            yield from handle
    except OSError as exc:
        raise IngestError(f"{path}: cannot read annotation file: {exc}") from exc


def _require_regular(path: Path) -> None:
    if not stat.S_ISREG(path.stat().st_mode):
        raise IngestError(f"{path}: cannot read annotation file: not a regular file")


def load_json(path: Path) -> Any:
    """Parse an annotation file, or fail with an error naming it (a wholly unreadable input)."""
    raw = read_regular(path)
    try:
        return json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: annotation file is not UTF-8 ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise IngestError(f"{path}: annotation file is not valid JSON ({exc})") from exc


def require(record: Any, name: str, kinds: tuple[type, ...], ref: str) -> Any:
    """A field that must be present with one of the given types."""
    if not isinstance(record, dict):
        raise RecordError("bad_record", f"{ref}: record is a {type(record).__name__}, not an object")
    if name not in record or record[name] is None:
        raise RecordError("missing_field", f"{ref}: field '{name}' is missing")
    value = record[name]
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        expected = "/".join(k.__name__ for k in kinds)
        raise RecordError("bad_field_type", f"{ref}: field '{name}' is {type(value).__name__}, expected {expected}")
    return value


def optional(record: Any, name: str, kinds: tuple[type, ...], ref: str) -> Any:
    if isinstance(record, dict) and record.get(name) is None:
        return None
    return require(record, name, kinds, ref)


def guarded(ref: str, native_id: str | None, build: Callable[[], RawRecord]) -> Item:
    """Run a record builder; a RecordError becomes a Reject instead of stopping the reader."""
    try:
        return build()
    except RecordError as exc:
        return Reject(ref, exc.reason, exc.detail, native_id)


def each_record(records: list, ref_prefix: str, id_field: str, build: Callable[[Any, str], RawRecord]) -> ReaderOutput:
    """``build(record, ref)`` for every record of an annotation list, refs ``<prefix><index>``."""
    for index, record in enumerate(records):
        ref = f"{ref_prefix}{index}"
        native = record.get(id_field) if isinstance(record, dict) else None
        yield guarded(ref, None if native is None else str(native), lambda: build(record, ref))
