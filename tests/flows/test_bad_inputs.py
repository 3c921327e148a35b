"""The bad-input corpus through `mmedpo ingest`: every bad row is a reject with its reason,
every unreadable file a clear error; nothing crashes, nothing outside the data root is read."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from tasks.catalog import REJECTS, SAMPLES, read_file
from tasks.imaging import ImageError, dicom_to_png, load_array
from tasks.store import DigestMemo
from tests.support.bad_inputs import CORPUS, bad_corpus, expected_outcomes, kept_ids


def ingest_cli(root: Path, out: Path, *extra: str) -> tuple[int, list[dict], list[dict]]:
    code = main(["ingest", "--format", "jsonl", "--root", str(root), "--out", str(out), "--name", "bad", *extra])
    return (
        code,
        read_file(out, SAMPLES).to_pylist(),
        read_file(out.with_suffix(".rejects.parquet"), REJECTS).to_pylist(),
    )


def test_every_bad_row_is_a_reject_with_its_reason(tmp_path, capsys):
    root = bad_corpus(tmp_path)
    code, samples, rejects = ingest_cli(root, tmp_path / "out.parquet")

    assert code == 0
    expected = expected_outcomes()
    assert {r["source_ref"]: r["reason"] for r in rejects} == {
        ref: why for ref, why in expected.items() if why != "kept"
    }
    assert sorted(s["source_ref"] for s in samples) == sorted(ref for ref, why in expected.items() if why == "kept")
    assert {s["sample_id"] for s in samples} == {f"bad:train:{i}" for i in kept_ids()}
    # Every reject says which line and what was wrong with it.
    assert all(r["detail"].startswith(r["source_ref"]) or str(root) in r["detail"] for r in rejects)
    printed = capsys.readouterr().out
    assert "samples.rejected.path_outside_root: 5" in printed and "samples.rejected.not_utf8: 1" in printed


def test_nothing_outside_the_root_is_used(tmp_path):
    root = bad_corpus(tmp_path)
    _, samples, _ = ingest_cli(root, tmp_path / "out.parquet")
    outside = {hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "outside").rglob("*.png")}
    rendered = (tmp_path / "out.images").resolve()  # 16-bit images windowed to 8 bits at ingest
    for sample in samples:
        path = Path(sample["image_path"]).resolve()
        assert path.is_relative_to(root.resolve()) or path.is_relative_to(rendered)
        assert sample["image_sha256"] not in outside


def test_16_bit_png_and_cmyk_jpeg_are_valid_inputs(tmp_path):
    from PIL import Image

    root = bad_corpus(tmp_path)
    _, samples, _ = ingest_cli(root, tmp_path / "out.parquet")
    by_id = {s["sample_id"]: s for s in samples}
    # Windowed to 8 bits once, at ingest, by its own range: every consumer (noise, the trainer's
    # convert('RGB'), evaluation) sees the gradient, never Pillow's clip of 16-bit values to white.
    gray16 = load_array(by_id["bad:train:gray16"]["image_path"])
    source = load_array(root / "gray16.png").astype(float)
    assert gray16.dtype == np.uint8 and (gray16.min(), gray16.max()) == (0, 255)
    assert np.abs(gray16 - np.round((source - source.min()) / np.ptp(source) * 255)).max() <= 1
    with Image.open(by_id["bad:train:gray16"]["image_path"]) as image:
        rgb = np.asarray(image.convert("RGB"))
    assert (rgb == 255).mean() < 0.01
    cmyk = load_array(by_id["bad:train:cmyk"]["image_path"])
    assert cmyk.shape == (64, 64, 3) and cmyk.dtype == np.uint8
    assert (by_id["bad:train:cmyk"]["width"], by_id["bad:train:cmyk"]["height"]) == (64, 64)
    assert by_id["bad:train:cmyk"]["boxes"] == [[16.0, 16.0, 48.0, 48.0]]


@pytest.mark.parametrize(
    ("folder", "message"),
    [
        ("slake_not_utf8", r"train\.json: annotation file is not UTF-8"),
        ("slake_wrong_shape", r"train\.json: expected a list of QA records"),
    ],
)
def test_an_unreadable_annotation_file_is_a_clear_error(tmp_path, capsys, folder, message):
    code = main(["ingest", "--format", "slake", "--root", str(CORPUS / folder), "--out", str(tmp_path / "out.parquet")])
    assert code == 2
    error = capsys.readouterr().err
    assert error.startswith("mmedpo: error: ") and "Traceback" not in error
    assert re.search(message, error), error
    assert not (tmp_path / "out.parquet").exists()


def test_a_missing_root_is_a_clear_error(tmp_path, capsys):
    code = main(
        ["ingest", "--format", "jsonl", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out.parquet")]
    )
    assert code == 2 and "data root does not exist" in capsys.readouterr().err


def test_a_dangling_symlink_does_not_break_the_raw_data_fingerprint(tmp_path):
    root = bad_corpus(tmp_path)
    memo = DigestMemo(tmp_path / "digests.sqlite")
    before = memo.tree(root)
    (root / "dangling.png").unlink()
    assert memo.tree(root) != before  # the link counted as an entry


def test_a_dicom_bomb_is_refused_before_its_pixels_are_decoded(tmp_path):
    with pytest.raises(ImageError) as caught:
        dicom_to_png(CORPUS / "bomb.dcm", tmp_path / "out.png", max_pixels=50_000_000)
    assert caught.value.reason == "image_too_large" and "20000x20000" in caught.value.detail
    assert not (tmp_path / "out.png").exists()


def test_one_bad_line_costs_only_that_line(tmp_path):
    root = tmp_path / "j"
    root.mkdir()
    (root / "a.png").write_bytes((CORPUS / "good.png").read_bytes())
    good = json.dumps({"id": "1", "image": "a.png", "question": "Is it normal?", "answer": "yes"}).encode()
    (root / "x.jsonl").write_bytes(
        b"\xef\xbb\xbf" + good + b"\n\xff\xfe garbage\n" + good.replace(b'"1"', b'"2"') + b"\r\n"
    )
    code, samples, rejects = ingest_cli(root, tmp_path / "out.parquet")
    assert code == 0
    assert sorted(s["sample_id"] for s in samples) == ["bad:train:1", "bad:train:2"]
    assert [(r["source_ref"], r["reason"]) for r in rejects] == [("x.jsonl:2", "not_utf8")]
