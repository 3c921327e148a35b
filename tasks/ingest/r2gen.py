"""IU-Xray / MIMIC-CXR in R2Gen's layout: annotation.json with train/val/test lists."""

from __future__ import annotations

from pathlib import Path

from tasks.ingest.records import IngestError, RawRecord, ReaderOutput, RecordError, each_record, load_json, require

REPORT_PROMPT = "Describe the findings of this chest X-ray."


def read_r2gen(root: Path) -> ReaderOutput:
    path = root / "annotation.json"
    if not path.is_file():
        raise IngestError(f"{root}: no annotation.json")
    splits = load_json(path)
    if not isinstance(splits, dict):
        raise IngestError(f"{path}: expected an object with train/val/test lists, got {type(splits).__name__}")
    for split, records in splits.items():
        if not isinstance(records, list):
            raise IngestError(f"{path}: split '{split}' is not a list")
        yield from each_record(records, f"{path.name}#{split}/", "id", lambda record, ref: _record(split, record, ref))


def _record(split: str, record: dict, ref: str) -> RawRecord:
    views = require(record, "image_path", (list, str), ref)
    views = [views] if isinstance(views, str) else views
    if not views or not all(isinstance(v, str) for v in views):
        raise RecordError("bad_field_type", f"{ref}: field 'image_path' must be a non-empty list of paths")
    images = [Path("images") / v for v in views]
    return RawRecord(
        native_id=str(require(record, "id", (str, int), ref)),
        split=str(record.get("split") or split),
        task="report",
        image=images[0],  # frontal view first, as distributed
        other_images=images[1:],
        question=REPORT_PROMPT,
        answer=require(record, "report", (str,), ref),
        answer_type="report",
        modality="X-Ray",
        source_ref=ref,
    )
