"""SLAKE (Slake1.0): train.json / validate.json / test.json plus per-image folders."""

from __future__ import annotations

from pathlib import Path

from tasks.ingest.records import (
    IngestError,
    RawRecord,
    ReaderOutput,
    RecordError,
    each_record,
    load_json,
    optional,
    require,
)

SPLIT_FILES = {"train": "train.json", "val": "validate.json", "test": "test.json"}


def read_slake(root: Path) -> ReaderOutput:
    present = {split: root / name for split, name in SPLIT_FILES.items() if (root / name).is_file()}
    if not present:
        raise IngestError(f"{root}: no SLAKE split file found (expected one of {sorted(SPLIT_FILES.values())})")
    for split, path in present.items():
        records = load_json(path)
        if not isinstance(records, list):
            raise IngestError(f"{path}: expected a list of QA records, got {type(records).__name__}")
        yield from each_record(records, f"{path.name}#", "qid", lambda record, ref: _record(root, split, record, ref))


def _record(root: Path, split: str, record: dict, ref: str) -> RawRecord:
    qid = require(record, "qid", (int, str), ref)
    img_name = require(record, "img_name", (str,), ref)
    image = Path("imgs") / img_name
    folder = (root / image).parent
    # Resolved before anything is opened: '..' or a linked folder must not reach a file outside.
    detection = (folder / "detection.json").resolve()
    if not detection.is_relative_to(root.resolve()):
        raise RecordError(
            "path_outside_root", f"{ref}: {image.parent / 'detection.json'} resolves outside the data root"
        )
    boxes, labels = _detection_boxes(detection, ref)
    mask = folder / "mask.png"
    return RawRecord(
        native_id=str(qid),
        split=split,
        task="vqa",
        image=image,
        question=require(record, "question", (str,), ref),
        answer=require(record, "answer", (str, int, float, bool), ref),
        answer_type=optional(record, "answer_type", (str,), ref),
        modality=optional(record, "modality", (str,), ref),
        language=optional(record, "q_lang", (str,), ref),
        boxes=boxes,
        box_labels=labels,
        mask=(image.parent / "mask.png") if mask.is_file() else None,
        source_ref=ref,
    )


def _detection_boxes(path: Path, ref: str) -> tuple[list[list[float]], list[str]]:
    """detection.json: ``[{"Liver": [x, y, w, h]}, ...]``; absent or ``[]`` means no boxes."""
    if not path.is_file():
        return [], []
    try:
        entries = load_json(path)
    except IngestError as exc:
        raise RecordError("bad_detection_file", f"{ref}: {exc}") from None
    if not isinstance(entries, list):
        raise RecordError("bad_detection_file", f"{ref}: {path} is not a list")
    boxes, labels = [], []
    for entry in entries:
        if not isinstance(entry, dict):
            raise RecordError("bad_detection_file", f"{ref}: {path} holds a {type(entry).__name__}, not an object")
        for label, xywh in entry.items():
            if not (isinstance(xywh, list) and len(xywh) == 4 and all(isinstance(v, (int, float)) for v in xywh)):
                raise RecordError("bad_detection_file", f"{ref}: {path} box for {label!r} is not [x, y, w, h]")
            x, y, w, h = (float(v) for v in xywh)
            boxes.append([x, y, x + w, y + h])
            labels.append(str(label))
    return boxes, labels
