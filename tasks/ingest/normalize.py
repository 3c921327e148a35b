"""Turn raw records of any format into SAMPLES rows or REJECTS rows, the same way for all.

Images are decoded once each (a SLAKE image carries ~10 questions), in a thread pool since
Pillow's decoders release the GIL.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from tasks import catalog
from tasks.catalog import SAMPLES, UNLABELED_BOX
from tasks.config import PLAIN_NAME, IngestConfig
from tasks.counters import Counters, qualified
from tasks.imaging import WIDE_MODES, ImageError, dicom_to_png, is_dicom, to_8bit
from tasks.ingest.checks import Checker, inspect_all
from tasks.ingest.records import RawRecord, RecordError, Reject

CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
YES_NO = {"yes", "no"}


ROW_BATCH = 2048  # kept samples held as Python rows at a time
# Records held until their images are checked. Every record of a source held for one check of all
# its images made ingest's peak grow with the samples (~1.5 KB a record as Python objects, ~25 MB
# at 16k), and the process kept that memory for the rest of the run; each batch reads the image
# check cache once.
CHECK_BATCH = 4096


@dataclass
class Normalized:
    rejects: list[dict] = field(default_factory=list)
    counts: Counters = field(default_factory=Counters)
    # Kept samples as Arrow tables a batch at a time: every sample's row held as a Python dict to
    # the end raised the stage's peak from ~1.8 to ~2.5 KB a sample (tracemalloc, 1k vs 8k samples).
    batches: list[pa.Table] = field(default_factory=list)
    pending: list[dict] = field(default_factory=list)

    def keep(self, row: dict) -> None:
        self.pending.append(row)
        if len(self.pending) >= ROW_BATCH:
            self.batches.append(catalog.table(self.pending, SAMPLES))
            self.pending = []

    def samples(self) -> pa.Table:
        """The kept samples (SAMPLES) in the order they were kept."""
        return pa.concat_tables([SAMPLES.schema.empty_table(), *self.batches, catalog.table(self.pending, SAMPLES)])

    def count(self, dataset: str, what: str, outcome: str, reason: str | None = None, n: int = 1) -> None:
        """Counted twice: run-wide (``samples.kept``) and per data set (``samples[slake].kept``)."""
        self.counts.add(what, outcome, reason, n)
        self.counts.add(qualified(what, dataset), outcome, reason, n)

    def reject(self, dataset: str, ref: str, reason: str, detail: str, sample_id: str | None = None) -> None:
        self.rejects.append(
            {"source_ref": ref, "dataset": dataset, "sample_id": sample_id, "reason": reason, "detail": detail}
        )
        self.count(dataset, "samples", "rejected", reason)


def normalize(
    items: Iterable[RawRecord | Reject],
    *,
    dataset: str,
    root: Path,
    image_dir: Path,
    config: IngestConfig,
    splits: list[str] | None,
    seen_ids: set[str],
    publish_as: Callable[[Path], Path] = lambda path: path,
    check: Checker = inspect_all,
) -> Normalized:
    """``seen_ids`` is shared across sources so that duplicate ids are caught run-wide.

    ``publish_as`` maps a file written under ``image_dir`` to the path it will have once the
    artifact is published (the store renames the stage's temporary folder into place).
    ``check`` decodes the images (``checks.cached_checker`` remembers them across runs).
    """
    out = Normalized()
    root = root.resolve() if root.is_dir() else root.resolve().parent
    accepted: list[tuple[RawRecord, str, str, Path]] = []
    # An image file's checks once, not once per question on it (a resolve, stats, a header read).
    files: dict[Path, Path] = {}

    # Ids of records rejected after they were held: free for later sources, still taken for this one's
    # later records, wherever its batches end.
    released: list[str] = []

    def settle(batch: list[tuple[RawRecord, str, str, Path]]) -> int:
        """Check a batch's images, then keep or reject each of its records; how many were kept."""
        checked = check({path for _, _, _, path in batch}, config)
        kept = 0
        for item, sample_id, language, image_path in batch:
            info = checked[image_path]
            if isinstance(info, ImageError):
                if image_path.is_relative_to(image_dir):
                    image_path.unlink(missing_ok=True)  # embedded bytes that failed: rejected bytes are never stored
                out.reject(dataset, item.source_ref, info.reason, info.detail, sample_id)
                released.append(sample_id)
                continue
            try:
                mask = _inside(root, item.mask, item.source_ref) if item.mask is not None else None
                others = [_inside(root, p, item.source_ref) for p in item.other_images]
            except RecordError as exc:
                out.reject(dataset, item.source_ref, exc.reason, exc.detail, sample_id)
                released.append(sample_id)
                continue
            if info.mode in WIDE_MODES:
                image_path = to_8bit(image_path, image_dir / f"{info.sha256}-8bit.png")
            boxes, labels, dropped = clip_boxes(item.boxes, item.box_labels, info.width, info.height)
            if dropped:
                out.count(dataset, "boxes", "dropped", "degenerate", dropped)
            out.keep(
                {
                    "sample_id": sample_id,
                    "dataset": dataset,
                    "split": item.split,
                    "task": item.task,
                    "image_path": str(publish_as(image_path)),
                    "image_sha256": info.sha256,
                    "image_phash": info.phash,
                    "width": info.width,
                    "height": info.height,
                    "modality": item.modality,
                    "question": _text(item.question),
                    "answer": answer_text(item.answer),
                    "answer_type": answer_type(item),
                    "boxes": boxes,
                    "box_labels": labels,
                    "mask_path": None if mask is None else str(mask),
                    "other_images": [str(p) for p in others],
                    "language": language,
                    "source_ref": item.source_ref,
                }
            )
            kept += 1
        return kept

    kept = 0
    for item in items:
        if isinstance(item, Reject):
            sample_id = None if item.native_id is None else f"{dataset}:?:{item.native_id}"
            out.reject(dataset, item.source_ref, item.reason, item.detail, sample_id)
            continue
        if not PLAIN_NAME.fullmatch(str(item.split)):
            # The split names files downstream (data/<split>-....parquet): never a path.
            out.reject(
                dataset,
                item.source_ref,
                "bad_split",
                f"{item.source_ref}: split {str(item.split)[:80]!r} is not a plain name",
            )
            continue
        if splits and item.split not in splits:
            out.count(dataset, "samples", "skipped", "split")
            continue
        sample_id = f"{dataset}:{item.split}:{item.native_id}"
        try:
            language = _language(item)
            if language not in config.languages:
                raise RecordError(
                    "language_not_kept", f"{item.source_ref}: question language {language!r} not in {config.languages}"
                )
            if isinstance(item.answer, float) and not math.isfinite(item.answer):
                raise RecordError("non_finite_answer", f"{item.source_ref}: field 'answer' is {item.answer}")
            question = _text(item.question)
            if not question:
                raise RecordError("empty_question", f"{item.source_ref}: field 'question' is empty")
            answer = answer_text(item.answer)
            if not answer:
                raise RecordError("empty_answer", f"{item.source_ref}: field 'answer' is empty")
            _check_text(item.source_ref, "question", question, config.max_question_chars)
            _check_text(item.source_ref, "answer", answer, config.max_answer_chars)
            if sample_id in seen_ids:
                raise RecordError(
                    "duplicate_id", f"{item.source_ref}: id {item.native_id!r} already ingested in split {item.split!r}"
                )
            named = None if isinstance(item.image, bytes) else item.image
            image_path = files.get(named) or _image_file(item, root, image_dir, config)
            if named is not None:
                files[named] = image_path
        except RecordError as exc:
            out.reject(dataset, item.source_ref, exc.reason, exc.detail, sample_id)
            continue
        seen_ids.add(sample_id)
        accepted.append((item, sample_id, language, image_path))
        if len(accepted) >= CHECK_BATCH:
            kept += settle(accepted)
            accepted = []

    kept += settle(accepted)
    seen_ids.difference_update(released)
    if kept:
        # Counted once: two counters named per kept sample were a tenth of a re-run's ingest.
        out.count(dataset, "samples", "kept", n=kept)
    return out


def answer_text(value: object) -> str:
    """Answers as strings: real files carry numbers (VQA-RAD ``2``) and booleans."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return _text(str(value))


def answer_type(item: RawRecord) -> str:
    if item.task == "report":
        return "report"
    given = str(item.answer_type or "").strip().lower()
    if given in {"closed", "open"}:
        return given
    return "closed" if answer_text(item.answer).lower() in YES_NO else "open"


def clip_boxes(
    boxes: list[list[float]], labels: list[str], width: int, height: int
) -> tuple[list[list[float]], list[str], int]:
    """Clip to the image; boxes with no area left are dropped (and counted by the caller)."""
    kept, kept_labels = [], []
    labels = list(labels) + [UNLABELED_BOX] * (len(boxes) - len(labels))
    for (x0, y0, x1, y1), label in zip(boxes, labels):
        x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
        y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            kept.append([x0, y0, x1, y1])
            kept_labels.append(label)
    return kept, kept_labels, len(boxes) - len(kept)


def _text(value: str) -> str:
    return " ".join(value.split())


# Control characters (NUL, escape codes...) after whitespace was folded: never part of a question.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _check_text(ref: str, field: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise RecordError(f"{field}_too_long", f"{ref}: field {field!r} has {len(text)} characters (limit {limit})")
    found = CONTROL.search(text)
    if found:
        raise RecordError("control_characters", f"{ref}: field {field!r} holds control character {found.group()!r}")


def _language(item: RawRecord) -> str:
    if item.language is not None:
        language = item.language.strip().lower()
        if not language:
            raise RecordError("unknown_language", f"{item.source_ref}: field 'q_lang' is empty")
        return language
    return "zh" if CJK.search(item.question) else "en"


def _inside(root: Path, relative: Path, ref: str) -> Path:
    """Resolve symlinks and '..' first, so neither can reach outside the data root."""
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise RecordError("path_outside_root", f"{ref}: {relative} resolves outside the data root {root}")
    return path


def _image_file(item: RawRecord, root: Path, image_dir: Path, config: IngestConfig) -> Path:
    """The file later stages read: the original, or a PNG made from embedded bytes / DICOM."""
    if isinstance(item.image, bytes):
        digest = hashlib.sha256(item.image).hexdigest()
        path = image_dir / f"{digest}{_suffix(item.image)}"
        if not path.exists():
            image_dir.mkdir(parents=True, exist_ok=True)
            path.write_bytes(item.image)
        return path
    path = _inside(root, item.image, item.source_ref)
    if path.exists() and not path.is_file():  # a folder, FIFO, device: never opened
        raise RecordError("not_a_regular_file", f"{item.source_ref}: image {item.image} is not a regular file")
    if not path.is_file():
        raise RecordError("missing_image", f"{item.source_ref}: image {item.image} not found under {root}")
    if is_dicom(path):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        png = image_dir / f"{digest}.png"
        if not png.exists():
            try:
                dicom_to_png(path, png, apply_window=config.dicom_window, max_pixels=config.max_image_pixels)
            except ImageError as exc:
                raise RecordError(exc.reason, f"{item.source_ref}: {exc.detail}") from None
        return png
    return path


def _suffix(data: bytes) -> str:
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"\xff\xd8"):
        return ".jpg"
    return ".img"
