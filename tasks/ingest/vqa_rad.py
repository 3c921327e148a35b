"""VQA-RAD: one JSON list; the test split is the phrase_type values starting with ``test_``."""

from __future__ import annotations

from pathlib import Path

from tasks.ingest.records import IngestError, RawRecord, ReaderOutput, each_record, load_json, optional, require

ANNOTATION = "VQA_RAD Dataset Public.json"
IMAGE_FOLDER = "VQA_RAD Image Folder"


def read_vqa_rad(root: Path) -> ReaderOutput:
    path = root / ANNOTATION
    if not path.is_file():
        candidates = sorted(root.glob("*.json"))
        if len(candidates) != 1:
            raise IngestError(f"{root}: expected '{ANNOTATION}'")
        path = candidates[0]
    records = load_json(path)
    if not isinstance(records, list):
        raise IngestError(f"{path}: expected a list of QA records, got {type(records).__name__}")
    yield from each_record(records, f"{path.name}#", "qid", _record)


def _record(record: dict, ref: str) -> RawRecord:
    phrase_type = optional(record, "phrase_type", (str,), ref) or ""
    return RawRecord(
        native_id=str(require(record, "qid", (str, int), ref)),
        split="test" if phrase_type.strip().lower().startswith("test_") else "train",
        task="vqa",
        image=Path(IMAGE_FOLDER) / require(record, "image_name", (str,), ref),
        question=require(record, "question", (str,), ref),
        answer=require(record, "answer", (str, int, float, bool), ref),
        answer_type=optional(record, "answer_type", (str,), ref),
        source_ref=ref,
    )
