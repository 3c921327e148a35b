"""Ingestion never stores rejected bytes, guards DICOM before it inflates or decodes more than
one frame, names what it cannot decode, and fails a run that keeps nothing."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tasks.catalog import REJECTS, SAMPLES, read_file
from tasks.config import IngestConfig, SourceConfig
from tasks.counters import NothingKept
from tasks.imaging import ImageError, dicom_to_png
from tasks.ingest import ingest, ingest_to_file
from tasks.store import ArtifactStore
from tests.support.bad_inputs import write_dicom


def test_a_deflated_dicom_bomb_is_refused_before_it_is_inflated(tmp_path, monkeypatch):
    import pydicom
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    path = write_dicom(tmp_path / "bomb.dcm", 4000, 4000, b"\x00" * 16_000_000, syntax=DeflatedExplicitVRLittleEndian)
    assert path.stat().st_size < 100_000  # a few KB declare 16 M pixels

    def no_parse(*args, **kwargs):
        raise AssertionError("dcmread inflated the whole data set")

    monkeypatch.setattr(pydicom, "dcmread", no_parse)
    with pytest.raises(ImageError) as caught:
        dicom_to_png(path, tmp_path / "out.png", max_pixels=1_000_000)
    assert caught.value.reason == "image_too_large" and "inflates past" in caught.value.detail


def test_a_small_deflated_dicom_still_renders(tmp_path):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    pixels = np.arange(64 * 64, dtype=np.uint8).reshape(64, 64)
    path = write_dicom(tmp_path / "small.dcm", 64, 64, pixels.tobytes(), syntax=DeflatedExplicitVRLittleEndian)
    out = dicom_to_png(path, tmp_path / "out.png", max_pixels=1_000_000)
    assert out.is_file()


def test_a_multi_frame_dicom_decodes_only_its_first_frame(tmp_path, monkeypatch):
    import pydicom.pixels

    frames = np.stack([np.full((32, 32), 10 + 4 * i, dtype=np.uint8) for i in range(48)])
    frames[0, :16] = 200
    path = write_dicom(tmp_path / "cine.dcm", 32, 32, frames.tobytes(), frames=48)
    asked = []
    real = pydicom.pixels.pixel_array

    def spy(source, **kwargs):
        asked.append(kwargs.get("index"))
        decoded = real(source, **kwargs)
        asked.append(decoded.shape)
        return decoded

    monkeypatch.setattr(pydicom.pixels, "pixel_array", spy)
    dicom_to_png(path, tmp_path / "out.png", max_pixels=1_000_000)
    from PIL import Image

    rendered = np.asarray(Image.open(tmp_path / "out.png"))
    assert asked == [0, (32, 32)]
    assert rendered[0, 0] == 255 and rendered[-1, -1] == 0  # frame 0: bright top half on 10s


def test_a_compressed_dicom_without_its_decoder_is_named_as_such(tmp_path):
    from pydicom.data import get_testdata_file
    from pydicom.pixels.decoders.base import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    path = Path(get_testdata_file("emri_small_jpeg_ls_lossless.dcm", download=False) or "")
    if not path.is_file():
        pytest.skip("pydicom's test data is not installed")
    with pytest.raises(ImageError) as caught:
        dicom_to_png(path, tmp_path / "out.png", max_pixels=1_000_000)
    assert caught.value.reason == "unsupported_dicom_compression" and "JPEG-LS" in caught.value.detail


def test_a_rejected_embedded_dicom_is_never_stored(tmp_path):
    root = tmp_path / "pathvqa"
    root.mkdir()
    phi = write_dicom(tmp_path / "phi.dcm", 32, 32, b"\x05" * 1024, PatientName="DOE^JANE", PatientID="PHI-123456")
    phi = phi.read_bytes()
    good = io.BytesIO()
    from PIL import Image

    Image.new("RGB", (32, 32), (10, 200, 30)).save(good, "PNG")
    rows = [
        {"image": {"bytes": phi, "path": None}, "question": "Is this malignant?", "answer": "yes"},
        {"image": {"bytes": good.getvalue(), "path": None}, "question": "What stain?", "answer": "H&E"},
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "train-00000-of-00001.parquet")
    source = SourceConfig(format="pathvqa", root=root)
    out = tmp_path / "out.parquet"
    ingest_to_file(source, IngestConfig(sources=[source]), out)
    rejects = read_file(out.with_suffix(".rejects.parquet"), REJECTS).to_pylist()
    assert [r["source_ref"].rsplit("#", 1)[1] for r in rejects] == ["0"]
    stored = [p.read_bytes() for p in out.with_suffix(".images").rglob("*") if p.is_file()]
    assert len(stored) == 1 and all(b"DOE^JANE" not in data and b"PHI-123456" not in data for data in stored)
    assert read_file(out, SAMPLES).num_rows == 1


def test_an_ingest_that_keeps_nothing_fails_and_stores_nothing(tmp_path):
    root = tmp_path / "j"
    root.mkdir()
    lines = [
        {"id": "1", "image": "missing.png", "question": "Is it normal?", "answer": "yes"},
        {"id": "2", "image": "missing.png", "question": "Is it normal?", "answer": "no"},
        {"id": "3", "image": "../outside.png", "question": "Is it normal?", "answer": "no"},
    ]
    (root / "x.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    store = ArtifactStore(tmp_path / "store")
    config = IngestConfig(sources=[SourceConfig(format="jsonl", root=root / "x.jsonl", name="x")])
    with pytest.raises(NothingKept) as caught:
        ingest(store, config)
    assert str(caught.value) == (
        "ingest: 0 samples kept (samples.rejected.missing_image 2, samples.rejected.path_outside_root 1); "
        "nothing is published"
    )
    assert not [p for p in (tmp_path / "store" / "ingest").iterdir() if not p.name.startswith(".")]


def test_a_split_that_is_a_path_never_names_a_file(tmp_path):
    # Ingest rejects such a split (tests/data/bad: bad_split); writing refuses it as well.
    from tasks.catalog import PAIRS, write

    with pytest.raises(ValueError, match="leaves the artifact folder"):
        write(tmp_path / "set", PAIRS, [], split="../../../../ESCAPED")
    assert not list(tmp_path.rglob("*.parquet"))


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "../prompts/hallucinate_inject_v1", ".x", ""])
def test_a_prompt_name_is_a_file_of_the_prompt_folder_never_a_path(name):
    from models import prompts

    with pytest.raises(FileNotFoundError, match="not found"):
        prompts.template(name)
