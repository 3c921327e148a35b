"""Reading and digesting a data root never follows a link out of it and never opens a FIFO or a
device (a run would hang on one)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tasks.ingest.records import IngestError
from tasks.store import DigestMemo
from tests.tasks.test_ingest import make_slake, reasons, run


@pytest.fixture
def no_hang():
    """Fail instead of hanging: a FIFO opened for reading blocks until a writer comes."""

    def alarm(*_):
        raise TimeoutError("blocked: a FIFO or device was opened")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_digesting_a_root_neither_follows_links_out_nor_opens_fifos(tmp_path, no_hang, monkeypatch):
    import tasks.store.keys as keys

    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "a.png").write_bytes(b"inside")
    (outside / "secret.bin").write_bytes(b"secret")
    (root / "link.bin").symlink_to(outside / "secret.bin")
    (root / "zero").symlink_to("/dev/zero")
    (root / "linked_dir").symlink_to(outside, target_is_directory=True)
    os.mkfifo(root / "pipe")
    memo = DigestMemo(tmp_path / "d.sqlite")
    read: list[str] = []
    original = keys._read_digest
    monkeypatch.setattr(keys, "_read_digest", lambda path: read.append(Path(path).name) or original(path))
    before = memo.tree(root)
    assert read == ["a.png"]  # only the regular file inside was read
    (outside / "secret.bin").write_bytes(b"changed outside")
    assert memo.tree(root) == before  # what lies outside is not part of the root
    (root / "link.bin").unlink()
    (root / "link.bin").symlink_to(outside / "other.bin")
    assert memo.tree(root) != before  # where a link points is


def test_a_fifo_or_device_named_as_an_image_is_a_reject(tmp_path, no_hang):
    root = tmp_path / "j"
    root.mkdir()
    os.mkfifo(root / "pipe.png")
    (root / "zero.png").symlink_to("/dev/zero")
    lines = [
        {"id": "1", "image": "pipe.png", "question": "Is it normal?", "answer": "yes"},
        {"id": "2", "image": "zero.png", "question": "Is it normal?", "answer": "yes"},
    ]
    (root / "x.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    _, rejects, _ = run(tmp_path, "jsonl", root)
    assert reasons(rejects) == {"x.jsonl:1": "not_a_regular_file", "x.jsonl:2": "path_outside_root"}


def test_an_annotation_file_that_is_a_fifo_is_an_error_not_a_hang(tmp_path, no_hang):
    root = tmp_path / "j"
    root.mkdir()
    os.mkfifo(root / "x.jsonl")
    with pytest.raises(IngestError, match="not a regular file"):
        run(tmp_path, "jsonl", root)


def test_a_jsonl_linked_from_outside_the_root_is_not_read(tmp_path):
    root = tmp_path / "j"
    root.mkdir()
    (tmp_path / "elsewhere.jsonl").write_text(json.dumps({"id": "1", "image": "a.png", "question": "q", "answer": "a"}))
    (root / "x.jsonl").symlink_to(tmp_path / "elsewhere.jsonl")
    with pytest.raises(IngestError, match="resolves outside the data root"):
        run(tmp_path, "jsonl", root)


@pytest.mark.parametrize("how", ["dotdot", "linked_folder"])
def test_slake_detection_outside_the_root_is_never_read(tmp_path, how):
    root = tmp_path / "Slake1.0"
    make_slake(root)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "detection.json").write_text(json.dumps([{"SECRET-LABEL": [1, 2, 3, 4]}]))
    (outside / "source.jpg").write_bytes((root / "imgs/xmlab1/source.jpg").read_bytes())
    train = json.loads((root / "train.json").read_text())
    if how == "dotdot":
        train[0]["img_name"] = "../../outside/source.jpg"
    else:
        (root / "imgs" / "linked").symlink_to(outside, target_is_directory=True)
        train[0]["img_name"] = "linked/source.jpg"
    (root / "train.json").write_text(json.dumps(train))
    samples, rejects, _ = run(tmp_path, "slake", root)
    assert reasons(rejects)["train.json#0"] == "path_outside_root"
    assert all("SECRET-LABEL" not in (r["detail"] or "") for r in rejects)
    assert all("SECRET-LABEL" not in s["box_labels"] for s in samples)
