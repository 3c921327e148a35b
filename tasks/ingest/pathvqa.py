"""PathVQA as re-distributed: Parquet files with image (struct with bytes), question, answer."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from tasks.ingest.records import IngestError, RawRecord, ReaderOutput, RecordError, guarded

SPLIT_PREFIXES = {"train": "train", "validation": "val", "val": "val", "test": "test"}
CLOSED_ANSWERS = {"yes", "no"}


def read_pathvqa(root: Path) -> ReaderOutput:
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else [root]
    if not files:
        raise IngestError(f"{root}: no .parquet files")
    for path in files:
        split = _split_of(path)
        try:
            data = pq.read_table(path)
        except Exception as exc:
            raise IngestError(f"{path}: not a readable Parquet file ({exc})") from exc
        missing = {"image", "question", "answer"} - set(data.column_names)
        if missing:
            raise IngestError(f"{path}: missing columns {sorted(missing)}")
        for index, row in enumerate(data.select(["image", "question", "answer"]).to_pylist()):
            ref = f"{path.name}#{index}"
            yield guarded(ref, f"{path.stem}-{index}", lambda: _record(path, split, index, row, ref))


def _split_of(path: Path) -> str:
    stem = path.stem.lower()
    for prefix, split in SPLIT_PREFIXES.items():
        if stem.startswith(prefix):
            return split
    return "train"


def _record(path: Path, split: str, index: int, row: dict, ref: str) -> RawRecord:
    image = row["image"]
    data = image.get("bytes") if isinstance(image, dict) else image
    if not isinstance(data, (bytes, bytearray)) or not data:
        raise RecordError("missing_image", f"{ref}: field 'image' has no bytes")
    if not isinstance(row["question"], str):
        raise RecordError("bad_field_type", f"{ref}: field 'question' is {type(row['question']).__name__}")
    answer = row["answer"]
    closed = isinstance(answer, str) and answer.strip().lower() in CLOSED_ANSWERS
    return RawRecord(
        native_id=f"{path.stem}-{index}",
        split=split,
        task="vqa",
        image=bytes(data),
        question=row["question"],
        answer=answer,
        answer_type="closed" if closed else "open",
        modality="Pathology",
        source_ref=ref,
    )
