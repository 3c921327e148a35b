"""The store is the truth: an artifact, item or published set is reused only when present and
whole, a damaged one is recomputed (and said so), and `mmedpo verify` names what is damaged."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tasks.config import StageConfig
from tasks.store import ArtifactStore, StageCachePolicy
from tasks.store.audit import audit, audit_sets
from tasks.store.packed import BLOBS, FROM_ARTIFACT, rows_folder
from tasks.store.verify import SMALL


class Options(StageConfig):
    k: int = 1


def build(calls: list, big: int = 0):
    def run(out: Path) -> dict:
        calls.append(out)
        (out / "samples.parquet").write_bytes(b"PAR1" + bytes(range(200)) + b"PAR1")
        (out / "images").mkdir()
        (out / "images" / "a.png").write_bytes(b"\x89PNG" + b"\x10" * 300)
        if big:
            (out / "big.bin").write_bytes(b"\x00" * big)
        return {"rows": 1}

    return run


def flip(path: Path, at: int = 10, keep_time: bool = False) -> None:
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    with open(path, "r+b") as handle:  # in place: every hard link sees it
        handle.write(bytes(data))
    if keep_time:
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("damaged", ["samples.parquet", "images/a.png"])
def test_a_flipped_byte_in_a_cached_artifact_is_recomputed_not_reused(tmp_path, damaged, caplog):
    store, calls = ArtifactStore(tmp_path), []
    first = store.run("ingest", "c", Options(), {}, build(calls))
    before = (Path(first.path) / damaged).read_bytes()
    flip(Path(first.path) / damaged, keep_time=True)  # small files are hashed whatever their time
    with caplog.at_level("WARNING", logger="mmedpo.store"):
        again = store.run("ingest", "c", Options(), {}, build(calls))
    assert len(calls) == 2 and again.digest == first.digest
    assert (Path(again.path) / damaged).read_bytes() == before
    assert f"{damaged}: content differs" in caplog.text and "recomputing" in caplog.text
    assert store.get("ingest", again.key) is not None


def test_a_truncated_or_deleted_file_and_a_lost_manifest_are_damage(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    built = store.run("ingest", "c", Options(), {}, build(calls))
    folder = Path(built.path)
    (folder / "samples.parquet").write_bytes(b"PAR1")
    assert store.get("ingest", built.key) is None and not folder.exists()
    built = store.run("ingest", "c", Options(), {}, build(calls))
    (folder / "images" / "a.png").unlink()
    assert store.get("ingest", built.key) is None
    built = store.run("ingest", "c", Options(), {}, build(calls))
    (folder / "manifest.json").unlink()  # a folder without its manifest must not block the key
    assert store.run("ingest", "c", Options(), {}, build(calls)).key == built.key and len(calls) == 4
    (folder / "manifest.json").write_text('{"stage": "ing')
    assert store.get("ingest", built.key) is None


def test_a_big_file_is_hashed_when_its_time_changed_and_always_by_a_deep_check(tmp_path):
    store, calls = ArtifactStore(tmp_path), []
    built = store.run("ingest", "c", Options(), {}, build(calls, big=SMALL + 10))
    big = Path(built.path) / "big.bin"
    flip(big, at=SMALL + 5, keep_time=True)
    assert store.get("ingest", built.key) is not None  # a size and time check only: cheap reads
    checked, found = audit(tmp_path)
    assert checked == 1 and [f.what for f in found] == [f"ingest/{built.key}"]
    assert found[0].problems == ["big.bin: content differs from when it was built"]
    flip(big, at=SMALL + 5)  # flipped back, new time: hashed, whole again
    assert store.get("ingest", built.key) is not None
    flip(big, at=SMALL + 6)
    assert store.get("ingest", built.key) is None


def test_prefect_records_are_not_trusted_over_a_damaged_artifact(tmp_path):
    policy = StageCachePolicy("ingest", "c")
    store, calls = ArtifactStore(tmp_path), []

    def key() -> str:
        return policy.compute_key(None, {"store_root": str(tmp_path), "config": Options()}, {})

    first = key()
    built = store.run("ingest", "c", Options(), {}, build(calls))
    assert key() == first
    flip(Path(built.path) / "images" / "a.png")
    assert key() != first  # Prefect's record of the damaged instance is never looked up


def items_compute(calls: list):
    def compute(payloads, folders):
        calls.extend(payloads)
        for payload, folder in zip(payloads, folders):
            (folder / "noised").mkdir(parents=True)
            (folder / "noised" / f"{payload}.png").write_bytes(b"\x89PNG" + payload.encode() * 50)
        return [{"id": p, "path": f"noised/{p}.png"} for p in payloads], {}

    return compute


def blob_of(root: Path, row: dict) -> Path:
    return root / BLOBS / row["path"].removeprefix(f"{FROM_ARTIFACT}/")


@pytest.mark.parametrize("damage", ["flip_blob", "truncate_rows", "delete_blob", "rows_not_parquet"])
def test_a_damaged_item_is_computed_again(tmp_path, damage):
    store, calls = ArtifactStore(tmp_path), []
    items = store.items("noise", "c", Options())
    wanted = [items.item(p, p) for p in ("a", "b")]
    out = tmp_path / "out1"
    rows = items.build(out, wanted, items_compute(calls))
    assert calls == ["a", "b"] and rows[0]["path"].startswith(f"{FROM_ARTIFACT}/")
    blob = blob_of(tmp_path, rows[0])
    [rows_file] = rows_folder(tmp_path, "noise").glob("*.parquet")
    if damage == "flip_blob":
        flip(blob, keep_time=True)
    elif damage == "truncate_rows":
        rows_file.write_bytes(rows_file.read_bytes()[:40])
    elif damage == "delete_blob":
        blob.unlink()
    else:
        rows_file.write_text('{"id": "a", "pa')
    second = tmp_path / "out2"
    again = items.build(second, wanted, items_compute(calls))
    recomputed = ["a"] if damage in ("flip_blob", "delete_blob") else ["a", "b"]
    assert calls == ["a", "b", *recomputed]
    assert again == rows
    assert blob_of(tmp_path, again[0]).read_bytes() == b"\x89PNG" + b"a" * 50


def test_a_published_set_with_a_flipped_byte_is_republished(tmp_path):
    from tasks.sets import publish

    store, calls = ArtifactStore(tmp_path / "store"), []
    built = store.run("assemble", "c", Options(), {}, build(calls))
    sets = tmp_path / "sets"
    version = publish(built, sets, "demo")
    flip(version / "images" / "a.png")  # a hard link: the artifact is damaged too
    assert [f.what for f in audit_sets(sets)[1]] == [f"set demo@{version.name}"]
    assert store.get("assemble", built.key) is None
    rebuilt = store.run("assemble", "c", Options(), {}, build(calls))
    assert publish(rebuilt, sets, "demo") == version
    assert audit_sets(sets)[1] == [] and audit(tmp_path / "store")[1] == []
    assert (version / "images" / "a.png").read_bytes() == b"\x89PNG" + b"\x10" * 300


def test_verify_names_the_damage_and_repair_sets_it_aside(tmp_path, capsys):
    from flows.cli import main

    store, calls = ArtifactStore(tmp_path / "store"), []
    built = store.run("ingest", "c", Options(), {}, build(calls))
    items = store.items("noise", "c", Options())
    wanted = [items.item("a", "a")]
    items.build(tmp_path / "out", wanted, items_compute([]))
    (tmp_path / "store" / "llm-cache").mkdir()  # not a stage: not judged
    argv = ["verify", "--store", str(tmp_path / "store"), "--sets", str(tmp_path / "none")]
    assert main(argv) == 0
    assert "checked 3 artifacts and items" in capsys.readouterr().out  # the artifact, the rows file, the blob
    flip(Path(built.path) / "samples.parquet")
    [blob] = (tmp_path / "store" / BLOBS).glob("??/*")
    flip(blob)
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert f"damaged: ingest/{built.key}: samples.parquet: content differs" in out
    name = blob.relative_to(tmp_path / "store" / BLOBS).as_posix()
    assert f"damaged: blob {name}: content differs from its name" in out and "2 damaged" in out
    assert main([*argv, "--repair"]) == 0
    assert not Path(built.path).exists() and main(argv) == 0
    assert "checked 1 artifacts" in capsys.readouterr().out.splitlines()[-1]  # the rows file stays


def test_verify_of_a_missing_store_is_one_line(tmp_path, capsys):
    from flows.cli import main

    assert main(["verify", "--store", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no store there" in err
