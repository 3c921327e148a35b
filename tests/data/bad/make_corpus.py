"""Regenerate the bad-input corpus in this folder: `python tests/data/bad/make_corpus.py`.

The files are committed (all small); this script says exactly what each one is. Symlinks
are not committed: tests make them at run time in a copy of the corpus (``link_out.png``,
``linked_dir``, ``dangling.png``), pointing at files and folders they create outside it
(see ``tests/support/bad_inputs.py``).
"""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).parent


def gradient(size: int = 64) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return (x + y).astype(np.float64) / (2 * size - 2)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height and that has no pixel data: a decompression bomb's
    header costs 45 bytes, and a reader that trusts it allocates width*height bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def write_dicom(
    path: Path, rows: int, columns: int, pixel_data: bytes | None, syntax: str | None = None, frames: int = 1, **extra
) -> None:
    """An 8-bit grey DICOM; ``syntax``: its transfer syntax (explicit VR little endian), ``extra``:
    more elements by keyword (PatientName=...)."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["mmedpo-bad-corpus", path.name])
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\x00" * 128)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.Modality = "OT"
    dataset.Rows, dataset.Columns = rows, columns
    dataset.SamplesPerPixel, dataset.PhotometricInterpretation = 1, "MONOCHROME2"
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit, dataset.PixelRepresentation = 8, 8, 7, 0
    if frames > 1:
        dataset.NumberOfFrames = frames
    for keyword, value in extra.items():
        setattr(dataset, keyword, value)
    if pixel_data is not None:
        dataset.PixelData = pixel_data
    dataset.save_as(path, enforce_file_format=True)


# One JSONL row per case; `expect` is what ingestion must do with it (kept, or the reject reason).
CASES = [
    ({"id": "good", "image": "good.png", "question": "Is there a lesion?", "answer": "yes", "boxes": [[8, 8, 40, 40]]}, "kept"),
    ({"id": "gray16", "image": "gray16.png", "question": "Is there a lesion?", "answer": "yes", "boxes": [[8, 8, 40, 40]]}, "kept"),
    ({"id": "cmyk", "image": "cmyk.jpg", "question": "Is there a lesion?", "answer": "no", "boxes": [[16, 16, 48, 48]]}, "kept"),
    ({"id": "truncated", "image": "truncated.jpg", "question": "Is there a lesion?", "answer": "yes"}, "corrupt_image"),
    ({"id": "zero", "image": "zero.png", "question": "Is there a lesion?", "answer": "yes"}, "corrupt_image"),
    ({"id": "tiny", "image": "one_by_one.png", "question": "Is there a lesion?", "answer": "yes"}, "image_too_small"),
    ({"id": "bomb", "image": "bomb.png", "question": "Is there a lesion?", "answer": "yes"}, "image_too_large"),
    ({"id": "nopixels", "image": "no_pixels.dcm", "question": "Is there a lesion?", "answer": "yes"}, "dicom_without_pixels"),
    ({"id": "dicombomb", "image": "bomb.dcm", "question": "Is there a lesion?", "answer": "yes"}, "image_too_large"),
    ({"id": "qtype", "image": "good.png", "question": 5, "answer": "yes"}, "bad_field_type"),
    ({"id": "boxtype", "image": "good.png", "question": "Where?", "answer": "left", "boxes": "8,8,40,40"}, "bad_field_type"),
    ({"id": "noanswer", "image": "good.png", "question": "Is there a lesion?"}, "missing_field"),
    ({"image": "good.png", "question": "Is there a lesion?", "answer": "yes"}, "missing_field"),
    ({"id": "good", "image": "good.png", "question": "Same id again?", "answer": "no"}, "duplicate_id"),
    ({"id": "escape", "image": "../../etc/passwd", "question": "Is there a lesion?", "answer": "yes"}, "path_outside_root"),
    ({"id": "absolute", "image": "/etc/passwd", "question": "Is there a lesion?", "answer": "yes"}, "path_outside_root"),
    ({"id": "symlink", "image": "link_out.png", "question": "Is there a lesion?", "answer": "yes"}, "path_outside_root"),
    ({"id": "symdir", "image": "linked_dir/secret.png", "question": "Is there a lesion?", "answer": "yes"}, "path_outside_root"),
    ({"id": "dangling", "image": "dangling.png", "question": "Is there a lesion?", "answer": "yes"}, "path_outside_root"),
    ({"id": "splitout", "split": "../../../../ESCAPED", "image": "good.png", "question": "Is there a lesion?", "answer": "yes"}, "bad_split"),
    ({"id": "splithidden", "split": ".hidden", "image": "good.png", "question": "Is there a lesion?", "answer": "yes"}, "bad_split"),
    ({"id": "nan", "image": "good.png", "question": "How large is it?", "answer": float("nan")}, "non_finite_answer"),
    ({"id": "inf", "image": "good.png", "question": "How large is it?", "answer": float("inf")}, "non_finite_answer"),
    ({"id": "nul", "image": "good.png", "question": "Is there\u0000 a lesion?", "answer": "yes"}, "control_characters"),
    ({"id": "escape_code", "image": "good.png", "question": "Is there a lesion?", "answer": "\u001b[2Jyes"}, "control_characters"),
    ({"id": "longq", "image": "good.png", "question": "Is there a lesion " * 300 + "?", "answer": "yes"}, "question_too_long"),
]
NOT_UTF8_LINE = b'{"id": "latin1", "image": "good.png", "question": "L\xe9sion?", "answer": "oui"}'


def main() -> None:
    rng = np.random.default_rng(0)
    Image.fromarray((gradient() * 200 + rng.integers(0, 40, (64, 64))).astype(np.uint8), mode="L").save(HERE / "good.png")
    # 12-bit CT-like values in a 16-bit PNG: Pillow 13 picks mode I;16 from the uint16 array.
    Image.fromarray((gradient() * 4000 + 50).astype(np.uint16)).save(HERE / "gray16.png")
    rgb = np.stack([gradient() * 255, 255 - gradient() * 255, np.full((64, 64), 90.0)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").convert("CMYK").save(HERE / "cmyk.jpg", format="JPEG", quality=90)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), mode="RGB").save(buffer, format="JPEG")
    (HERE / "truncated.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    (HERE / "zero.png").write_bytes(b"")
    Image.new("L", (1, 1), 128).save(HERE / "one_by_one.png")
    (HERE / "bomb.png").write_bytes(png_header_only(20000, 20000))
    write_dicom(HERE / "no_pixels.dcm", 64, 64, None)  # the header describes an image; there is no PixelData
    write_dicom(HERE / "bomb.dcm", 20000, 20000, b"\x00" * 16)  # a header claiming 400 M pixels
    lines = [json.dumps(record).encode() for record, _ in CASES[:3]]
    lines.append(NOT_UTF8_LINE)  # line 4: one bad line must not cost the file's other rows
    lines += [json.dumps(record).encode() for record, _ in CASES[3:]]
    lines.append(b'{"id": "broken", "image": ')  # not JSON
    lines.append(b'["a", "list"]')  # JSON, but not an object
    (HERE / "annotations.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    # A SLAKE split file that is not UTF-8: the whole file is unreadable, a clear error names it.
    (HERE / "slake_not_utf8").mkdir(exist_ok=True)
    (HERE / "slake_not_utf8" / "train.json").write_bytes(b'[{"qid": 1, "img_name": "xmlab1/source.jpg", "question": "L\xe9sion?"}]')
    # A SLAKE split file that is JSON but not a list of records.
    (HERE / "slake_wrong_shape").mkdir(exist_ok=True)
    (HERE / "slake_wrong_shape" / "train.json").write_text(json.dumps({"qid": 1, "question": "a dict, not a list"}))


if __name__ == "__main__":
    main()
