"""Every adapter on small fixtures in the real on-disk layouts, messy rows included."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks.catalog import REJECTS, SAMPLES, read_file
from tasks.config import IngestConfig, SourceConfig
from tasks.ingest import build_samples, ingest_to_file
from tasks.ingest.records import IngestError


def png(path: Path, size=(40, 30), value=100, mode="L") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value).save(path)
    return path


def jpeg_bytes(size=(32, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
        buffer, "JPEG"
    )
    return buffer.getvalue()


def run(tmp_path: Path, fmt: str, root: Path, **kwargs) -> tuple[list[dict], list[dict], dict]:
    source = SourceConfig(format=fmt, root=root, **kwargs)
    out = tmp_path / "out.parquet"
    counts = ingest_to_file(source, IngestConfig(sources=[source]), out)
    samples = read_file(out, SAMPLES).to_pylist()
    rejects = read_file(out.with_suffix(".rejects.parquet"), REJECTS).to_pylist()
    return samples, rejects, counts


def reasons(rejects: list[dict]) -> dict[str, str]:
    return {r["source_ref"]: r["reason"] for r in rejects}


# ---------------------------------------------------------------- SLAKE


def make_slake(root: Path) -> None:
    png(root / "imgs/xmlab1/source.jpg", (100, 80))  # SLAKE names PNG-decodable files .jpg too
    png(root / "imgs/xmlab1/mask.png", (100, 80), 0)
    (root / "imgs/xmlab1/detection.json").write_text(
        json.dumps([{"Brain Edema": [10.0, 20.0, 30.0, 40.0]}, {"Liver": [90, 70, 50, 50]}])
    )
    png(root / "imgs/xmlab2/source.jpg", (64, 64))  # no detection.json, no mask
    base = {
        "img_id": 1,
        "location": "Abdomen",
        "modality": "MRI",
        "base_type": "vqa",
        "content_type": "Modality",
        "triple": ["vhead", "_", "_"],
    }
    train = [
        {
            **base,
            "qid": 0,
            "img_name": "xmlab1/source.jpg",
            "question": "What modality is used?",
            "answer": "MRI",
            "q_lang": "en",
            "answer_type": "OPEN",
        },
        {
            **base,
            "qid": 1,
            "img_name": "xmlab1/source.jpg",
            "question": "这是什么成像方式?",
            "answer": "核磁共振",
            "q_lang": "zh",
            "answer_type": "OPEN",
        },
        {
            **base,
            "qid": 2,
            "img_id": 2,
            "img_name": "xmlab2/source.jpg",
            "question": "Is this a CT?",
            "answer": "No",
            "q_lang": "en",
            "answer_type": "CLOSED",
        },
        {
            **base,
            "qid": 3,
            "img_name": "xmlab9/source.jpg",
            "question": "Where?",
            "answer": "Liver",
            "q_lang": "en",
            "answer_type": "OPEN",
        },
        {
            **base,
            "qid": 0,
            "img_name": "xmlab2/source.jpg",
            "question": "Duplicate id?",
            "answer": "yes",
            "q_lang": "en",
            "answer_type": "CLOSED",
        },
        {
            **base,
            "qid": 5,
            "img_name": "xmlab2/source.jpg",
            "question": "",
            "answer": "yes",
            "q_lang": "en",
            "answer_type": "CLOSED",
        },
    ]
    (root / "train.json").write_text(json.dumps(train, ensure_ascii=False))
    test = [
        {
            **base,
            "qid": 100,
            "img_name": "xmlab2/source.jpg",
            "question": "Is there a lesion?",
            "answer": "Yes",
            "q_lang": "en",
            "answer_type": "CLOSED",
        }
    ]
    (root / "test.json").write_text(json.dumps(test))


def test_slake_layout(tmp_path):
    root = tmp_path / "Slake1.0"
    make_slake(root)
    samples, rejects, counts = run(tmp_path, "slake", root)
    by_id = {s["sample_id"]: s for s in samples}
    assert set(by_id) == {"slake:train:0", "slake:train:2", "slake:test:100"}
    first = by_id["slake:train:0"]
    # [x, y, w, h] -> [x0, y0, x1, y1]; the Liver box is clipped to the 100x80 image.
    assert first["boxes"] == [[10.0, 20.0, 40.0, 60.0], [90.0, 70.0, 100.0, 80.0]]
    assert first["box_labels"] == ["Brain Edema", "Liver"]
    assert first["mask_path"] == str((root / "imgs/xmlab1/mask.png").resolve())
    assert (first["width"], first["height"], first["modality"], first["answer_type"]) == (100, 80, "MRI", "open")
    assert by_id["slake:train:2"]["boxes"] == [] and by_id["slake:train:2"]["mask_path"] is None
    assert by_id["slake:train:2"]["answer_type"] == "closed"
    assert reasons(rejects) == {
        "train.json#1": "language_not_kept",
        "train.json#3": "missing_image",
        "train.json#4": "duplicate_id",
        "train.json#5": "empty_question",
    }
    assert counts["samples.kept"] == 3 and counts["samples[slake].rejected.language_not_kept"] == 1


def test_slake_split_filter_and_chinese_kept_when_asked(tmp_path):
    root = tmp_path / "Slake1.0"
    make_slake(root)
    samples, rejects, counts = run(tmp_path, "slake", root, splits=["train"])
    assert {s["split"] for s in samples} == {"train"}
    assert counts["samples[slake].skipped.split"] == 1
    source = SourceConfig(format="slake", root=root)
    out = tmp_path / "zh.parquet"
    ingest_to_file(source, IngestConfig(sources=[source], languages=["en", "zh"]), out)
    answers = {r["sample_id"]: r["answer"] for r in pq.read_table(out).to_pylist()}
    assert answers["slake:train:1"] == "核磁共振"


def test_slake_unreadable_annotation_names_the_file(tmp_path):
    root = tmp_path / "Slake1.0"
    root.mkdir()
    (root / "train.json").write_bytes(b'[{"qid": 0,')
    with pytest.raises(IngestError, match="train.json"):
        run(tmp_path, "slake", root)


def test_slake_malformed_detection_is_a_reject(tmp_path):
    root = tmp_path / "Slake1.0"
    make_slake(root)
    (root / "imgs/xmlab1/detection.json").write_text(json.dumps([{"Liver": "big"}]))
    _, rejects, _ = run(tmp_path, "slake", root)
    assert reasons(rejects)["train.json#0"] == "bad_detection_file"


# ---------------------------------------------------------------- VQA-RAD


def test_vqa_rad_numeric_answers_whitespace_types_and_split(tmp_path):
    root = tmp_path / "VQA_RAD"
    png(root / "VQA_RAD Image Folder/synpic1.jpg")
    records = [
        {
            "qid": "0",
            "image_name": "synpic1.jpg",
            "image_organ": "HEAD",
            "question": "How many lesions?",
            "answer": 2,
            "answer_type": " open ",
            "question_type": "COUNT",
            "phrase_type": "freeform",
        },
        {
            "qid": "1",
            "image_name": "synpic1.jpg",
            "image_organ": "HEAD",
            "question": "Is there a lesion?",
            "answer": "Yes",
            "answer_type": "closed",
            "question_type": "PRES",
            "phrase_type": "test_para",
        },
        {
            "qid": 2,
            "image_name": "synpic1.jpg",
            "question": "Size?",
            "answer": 2.5,
            "answer_type": "OPEN",
            "phrase_type": "para",
        },
        {
            "qid": "3",
            "image_name": "synpic1.jpg",
            "question": "Bad?",
            "answer": ["a"],
            "answer_type": "OPEN",
            "phrase_type": "para",
        },
    ]
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(records))
    samples, rejects, _ = run(tmp_path, "vqa-rad", root)
    by_id = {s["sample_id"]: s for s in samples}
    assert by_id["vqa-rad:train:0"]["answer"] == "2" and by_id["vqa-rad:train:0"]["answer_type"] == "open"
    assert by_id["vqa-rad:test:1"]["answer_type"] == "closed"
    assert by_id["vqa-rad:train:2"]["answer"] == "2.5"
    assert reasons(rejects) == {"VQA_RAD Dataset Public.json#3": "bad_field_type"}
    assert "answer" in rejects[0]["detail"]


# ---------------------------------------------------------------- R2Gen


def test_r2gen_multi_view_studies_and_empty_reports(tmp_path):
    root = tmp_path / "iu_xray"
    png(root / "images/CXR1/0.png")
    png(root / "images/CXR1/1.png")
    png(root / "images/CXR2/0.png")
    (root / "images/CXR3").mkdir(parents=True)
    (root / "images/CXR3/0.png").write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    annotation = {
        "train": [
            {
                "id": "CXR1",
                "report": "The heart is normal in size.",
                "image_path": ["CXR1/0.png", "CXR1/1.png"],
                "split": "train",
            },
            {"id": "CXR2", "report": "", "image_path": ["CXR2/0.png"], "split": "train"},
        ],
        "val": [],
        "test": [{"id": "CXR3", "report": "No acute disease.", "image_path": ["CXR3/0.png"], "split": "test"}],
    }
    (root / "annotation.json").write_text(json.dumps(annotation))
    samples, rejects, _ = run(tmp_path, "r2gen", root)
    assert [s["sample_id"] for s in samples] == ["iu-xray:train:CXR1"]
    study = samples[0]
    assert study["task"] == "report" and study["answer_type"] == "report" and study["dataset"] == "iu-xray"
    assert study["image_path"].endswith("CXR1/0.png") and study["other_images"][0].endswith("CXR1/1.png")
    assert reasons(rejects) == {"annotation.json#train/1": "empty_answer", "annotation.json#test/0": "corrupt_image"}


# ---------------------------------------------------------------- PathVQA


def test_pathvqa_parquet_with_embedded_images(tmp_path):
    root = tmp_path / "pathvqa"
    root.mkdir()
    rows = [
        {"image": {"bytes": jpeg_bytes(), "path": None}, "question": "Is this malignant?", "answer": "yes"},
        {"image": {"bytes": jpeg_bytes((20, 20)), "path": None}, "question": "What stain?", "answer": "H&E"},
        {"image": {"bytes": None, "path": None}, "question": "Missing?", "answer": "no"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "test-00000-of-00001.parquet")
    samples, rejects, _ = run(tmp_path, "pathvqa", root)
    assert [(s["split"], s["answer_type"]) for s in samples] == [("test", "closed"), ("test", "open")]
    assert Path(samples[0]["image_path"]).read_bytes() == rows[0]["image"]["bytes"]
    assert reasons(rejects) == {"test-00000-of-00001.parquet#2": "missing_image"}


# ---------------------------------------------------------------- JSONL + DICOM


def test_jsonl_dicom_boxes_and_hostile_paths(tmp_path):
    from pydicom.data import get_testdata_file

    root = tmp_path / "mine"
    root.mkdir()
    shutil.copyfile(get_testdata_file("RG1_UNCI.dcm", download=False), root / "cxr.dcm")
    png(root / "ok.png", (50, 50))
    (tmp_path / "secret.png").write_bytes(Image.new("L", (50, 50)).tobytes())
    (root / "link.png").symlink_to(tmp_path / "secret.png")
    lines = [
        {
            "id": "a",
            "image": "cxr.dcm",
            "question": "Any mass?",
            "answer": True,
            "task": "vqa",
            "boxes": [[1, 2, 30, 40]],
        },
        {"id": "b", "image": "../secret.png", "question": "Q?", "answer": "x"},
        {"id": "c", "image": "link.png", "question": "Q?", "answer": "x"},
        {"id": "d", "image": "ok.png", "question": "Describe.", "answer": "Normal.", "task": "report", "split": "test"},
        "not an object",
    ]
    text = "\n".join(json.dumps(x) for x in lines) + "\n{broken json\n"
    (root / "data.jsonl").write_text(text)
    samples, rejects, _ = run(tmp_path, "jsonl", root)
    by_id = {s["sample_id"]: s for s in samples}
    dicom = by_id["mine:train:a"]
    assert dicom["answer"] == "yes" and dicom["answer_type"] == "closed" and dicom["boxes"] == [[1.0, 2.0, 30.0, 40.0]]
    assert dicom["image_path"].endswith(".png") and (dicom["width"], dicom["height"]) == (1841, 1955)
    pixels = np.asarray(Image.open(dicom["image_path"]))
    # MONOCHROME1 inverted: the air beside the patient (top corners) renders dark, the spine bright.
    assert pixels[:100, :100].mean() + 80 < pixels[300:1500, 880:960].mean()
    assert by_id["mine:test:d"]["answer_type"] == "report"
    assert reasons(rejects) == {
        "data.jsonl:2": "path_outside_root",
        "data.jsonl:3": "path_outside_root",
        "data.jsonl:5": "bad_record",
        "data.jsonl:6": "bad_json",
    }


def test_dicom_png_carries_no_identifiers(tmp_path):
    from pydicom.data import get_testdata_file

    root = tmp_path / "d"
    root.mkdir()
    source = Path(get_testdata_file("CT_small.dcm", download=False))
    shutil.copyfile(source, root / "ct.dcm")
    (root / "x.jsonl").write_text(
        json.dumps({"id": "1", "image": "ct.dcm", "question": "Modality?", "answer": "CT"}) + "\n"
    )
    samples, _, _ = run(tmp_path, "jsonl", root)
    import pydicom

    name = str(pydicom.dcmread(source).PatientName).encode()
    converted = Path(samples[0]["image_path"]).read_bytes()
    assert name and name not in converted and b"DICM" not in converted


def test_build_samples_catches_duplicates_across_sources(tmp_path):
    root = tmp_path / "j"
    png(root / "a.png")
    (root / "one.jsonl").write_text(json.dumps({"id": "1", "image": "a.png", "question": "Q?", "answer": "A"}) + "\n")
    source = SourceConfig(format="jsonl", root=root / "one.jsonl", name="same")
    counts = build_samples(tmp_path / "art", IngestConfig(sources=[source, source]), tmp_path / "art")
    assert counts["samples.kept"] == 1 and counts["samples[same].rejected.duplicate_id"] == 1
    rejects = pq.read_table(tmp_path / "art/rejects.parquet").to_pylist()
    assert rejects[0]["reason"] == "duplicate_id" and rejects[0]["sample_id"] == "same:train:1"


def test_rendered_images_are_recorded_where_the_published_artifact_keeps_them(tmp_path):
    from pydicom.data import get_testdata_file

    from tasks.ingest import ingest
    from tasks.store import ArtifactStore

    root = tmp_path / "d"
    root.mkdir()
    shutil.copyfile(get_testdata_file("CT_small.dcm", download=False), root / "ct.dcm")
    (root / "x.jsonl").write_text(
        json.dumps({"id": "1", "image": "ct.dcm", "question": "Modality?", "answer": "CT"}) + "\n"
    )
    config = IngestConfig(sources=[SourceConfig(format="jsonl", root=root)])
    manifest = ingest(ArtifactStore(tmp_path / "store"), config)
    path = Path(read_file(manifest.file("samples.parquet"), SAMPLES)["image_path"][0].as_py())
    assert path.is_file() and path.is_relative_to(Path(manifest.path))


def test_an_image_with_many_questions_is_checked_once_and_each_bad_reference_rejected(tmp_path, monkeypatch):
    import importlib

    normalize = importlib.import_module("tasks.ingest.normalize")  # the package's `normalize` is the function
    root = tmp_path / "many"
    root.mkdir()
    png(root / "ok.png", (50, 50))
    opened = []
    is_dicom = normalize.is_dicom
    monkeypatch.setattr(normalize, "is_dicom", lambda path: opened.append(path.name) or is_dicom(path))
    lines = [{"id": str(i), "image": "ok.png", "question": f"Q{i}?", "answer": "x"} for i in range(3)]
    lines += [{"id": f"m{i}", "image": "gone.png", "question": "Q?", "answer": "x"} for i in range(2)]
    (root / "data.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    samples, rejects, _ = run(tmp_path, "jsonl", root)
    assert opened == ["ok.png"]  # one header read for its three questions
    assert len({s["image_path"] for s in samples}) == 1 and len(samples) == 3
    assert reasons(rejects) == {"data.jsonl:4": "missing_image", "data.jsonl:5": "missing_image"}


def test_records_are_checked_a_batch_at_a_time_with_the_same_outcome(tmp_path, monkeypatch):
    import importlib

    from tasks.ingest import read_source
    from tasks.ingest.checks import inspect_all

    normalize = importlib.import_module("tasks.ingest.normalize")
    root = tmp_path / "batched"
    root.mkdir()
    for name, value in (("a.png", 60), ("b.png", 120)):
        png(root / name, (40, 40), value)
    (root / "bad.png").write_bytes(b"not a png")
    images = ["a.png", "bad.png", "b.png"]
    lines = [{"id": str(i), "image": images[i % 3], "question": "Q?", "answer": "x"} for i in range(7)]
    lines.append({"id": "1", "image": "a.png", "question": "Q?", "answer": "x"})  # a duplicate, batches apart
    (root / "data.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    source = SourceConfig(format="jsonl", root=root)
    config = IngestConfig(sources=[source])
    checked: list[set[str]] = []

    def counting(paths, config):
        checked.append({p.name for p in paths})
        return inspect_all(paths, config)

    whole = read_source(source, config, tmp_path / "images", set(), check=counting)
    assert len(checked) == 1
    checked.clear()
    monkeypatch.setattr(normalize, "CHECK_BATCH", 3)
    batched = read_source(source, config, tmp_path / "images", set(), check=counting)
    # Records 0-2, 3-5 and 6 (the duplicate is rejected before it is held): a check of each batch's images.
    assert checked == [set(images), set(images), {"a.png"}]
    assert batched.samples().equals(whole.samples())
    assert [s.rsplit(":", 1)[1] for s in whole.samples().column("sample_id").to_pylist()] == ["0", "2", "3", "5", "6"]
    assert sorted(reasons(batched.rejects).items()) == sorted(reasons(whole.rejects).items())
    assert {ref: reason for ref, reason in reasons(whole.rejects).items() if reason == "duplicate_id"} == {
        "data.jsonl:8": "duplicate_id"
    }
    assert batched.counts.as_dict() == whole.counts.as_dict()
