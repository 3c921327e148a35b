"""The project's generic JSONL: one object a line, image paths relative to the file."""

from __future__ import annotations

import json
from pathlib import Path

from tasks.catalog import UNLABELED_BOX
from tasks.ingest.records import (
    IngestError,
    RawRecord,
    ReaderOutput,
    RecordError,
    Reject,
    guarded,
    optional,
    regular_lines,
    require,
)

TASKS = {"vqa", "report"}


def read_jsonl(root: Path) -> ReaderOutput:
    files = sorted(root.glob("*.jsonl")) if root.is_dir() else [root]
    if not files:
        raise IngestError(f"{root}: no .jsonl files")
    for path in files:
        if root.is_dir() and not path.resolve().is_relative_to(root.resolve()):
            raise IngestError(f"{path}: resolves outside the data root {root}")
        # Image paths are relative to the file, which may sit below the data root.
        prefix = path.parent.relative_to(root) if root.is_dir() else Path()
        # Each image's path made once, not once per question on it (a Path per line was a tenth of a re-run's ingest).
        images: dict[str, Path] = {}
        # Decoded line by line: one line in another encoding costs that row, not the file. Read as
        # parsed: the whole file and its lines held at once grew the process with the samples.
        for number, raw in enumerate(regular_lines(path), start=1):
            raw = raw.removeprefix(b"\xef\xbb\xbf") if number == 1 else raw
            if not raw.strip():
                continue
            ref = f"{path.name}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                yield Reject(
                    ref, "not_utf8", f"{ref}: line is not UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})"
                )
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield Reject(ref, "bad_json", f"{ref}: not valid JSON ({exc.msg})")
                continue
            native = record.get("id") if isinstance(record, dict) else None
            yield guarded(ref, None if native is None else str(native), lambda: _record(prefix, record, ref, images))


def _record(prefix: Path, record: dict, ref: str, images: dict[str, Path]) -> RawRecord:
    task = optional(record, "task", (str,), ref) or "vqa"
    if task not in TASKS:
        raise RecordError("bad_field_value", f"{ref}: field 'task' is {task!r}, expected one of {sorted(TASKS)}")
    boxes = optional(record, "boxes", (list,), ref) or []
    if not all(isinstance(b, list) and len(b) == 4 and all(isinstance(v, (int, float)) for v in b) for b in boxes):
        raise RecordError("bad_field_type", f"{ref}: field 'boxes' must be a list of [x0, y0, x1, y1]")
    labels = optional(record, "box_labels", (list,), ref) or [UNLABELED_BOX] * len(boxes)
    return RawRecord(
        native_id=str(require(record, "id", (str, int), ref)),
        split=optional(record, "split", (str,), ref) or "train",
        task=task,
        image=image_path(prefix, require(record, "image", (str,), ref), images),
        question=require(record, "question", (str,), ref),
        answer=require(record, "answer", (str, int, float, bool), ref),
        answer_type=optional(record, "answer_type", (str,), ref) or ("report" if task == "report" else None),
        modality=optional(record, "modality", (str,), ref),
        language=optional(record, "language", (str,), ref),
        boxes=[[float(v) for v in b] for b in boxes],
        box_labels=[str(label) for label in labels],
        source_ref=ref,
    )


def image_path(prefix: Path, name: str, made: dict[str, Path]) -> Path:
    if name not in made:
        made[name] = prefix / name
    return made[name]
