"""`mmedpo store gc`: item rows files and blobs no artifact uses any more are listed (a dry run)
or deleted; what an artifact uses - and the item cache its rows keep reusable - never is."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from tasks.config import LocalizeConfig
from tasks.localize import localize
from tasks.store import MANIFEST, ArtifactStore
from tasks.store.files import OWNER, TEMP_PREFIX
from tasks.store.gc import CollectionRefused, collect
from tasks.store.packed import BLOBS, blobs_named, read_rows, rows_folder
from tests.support.samples import ingest_manifest, sample_row, write_image


def regions(store: ArtifactStore, image: Path, boxes: dict[str, list[float]]):
    rows = [sample_row(sample_id, image, boxes=[box]) for sample_id, box in boxes.items()]
    return localize(store, LocalizeConfig(), ingest_manifest(store, rows))


def files(root: Path) -> set[str]:
    found = list(rows_folder(root, "localize").glob("*.parquet")) + list((root / BLOBS).glob("*/*"))
    return {path.relative_to(root).as_posix() for path in found}


@pytest.fixture
def two_curations(tmp_path):
    """An old curation (one box) whose artifact the user removed, and the current one (two others)."""
    image = write_image(tmp_path / "img.png", np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8))
    store = ArtifactStore(tmp_path / "store")
    old = regions(store, image, {"a": [2, 2, 12, 12]})
    old_files = files(store.root)
    current = regions(store, image, CURRENT)
    return store, old, old_files, current, image


CURRENT = {"b": [20, 20, 40, 30], "c": [5, 25, 15, 35]}


def test_gc_lists_then_deletes_only_what_no_artifact_uses(two_curations, capsys):
    store, old, old_files, current, image = two_curations
    root = store.root
    assert collect(root, min_age_s=0).rows == []  # both artifacts present: everything is used
    shutil.rmtree(old.path)
    before = files(root)
    assert len(old_files) == 2  # the old curation's rows file and its mask

    garbage = collect(root, min_age_s=0)  # a dry run: listed, nothing deleted
    assert {p.relative_to(root).as_posix() for p, _ in garbage.rows + garbage.blobs} == old_files
    assert garbage.bytes == sum((root / name).stat().st_size for name in old_files) > 0
    assert files(root) == before
    assert collect(root).rows == []  # files younger than an hour are a run's in progress: never collected

    assert main(["store", "gc", "--root", str(root), "--min-age-minutes", "0", "--delete"]) == 0
    out = capsys.readouterr().out
    assert f"1 rows files and 1 blobs, {garbage.bytes / 1e6:.1f} MB, deleted" in out
    assert files(root) == before - old_files
    # The current artifact is whole and its items stay reusable: rebuilt without it, nothing is computed.
    kept = [row for path in rows_folder(root, "localize").glob("*.parquet") for _, row in read_rows(path)]
    assert all((root / BLOBS / name).is_file() for row in kept for name in blobs_named(row))
    assert store.get("localize", current.key) is not None
    shutil.rmtree(current.path)
    assert regions(store, image, CURRENT).work == {"computed": 0, "reused": 2}


def test_gc_keeps_a_stage_whose_artifacts_predate_recorded_rows_and_refuses_a_busy_store(two_curations, tmp_path):
    store, old, old_files, current, _ = two_curations
    shutil.rmtree(old.path)
    manifest = Path(current.path) / MANIFEST
    written = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({k: v for k, v in written.items() if k != "item_rows"}))
    garbage = collect(store.root, min_age_s=0, delete=True)
    assert (garbage.rows, garbage.kept_stages) == ([], ["localize"])
    assert old_files <= files(store.root)  # its rows kept, and so the blobs they name

    # A stage folder linked to elsewhere: nothing outside the store is ever deleted.
    outside = tmp_path / "elsewhere"
    (outside / ".items" / "rows").mkdir(parents=True)
    (outside / ".items" / "rows" / "x.parquet").write_bytes(b"not mine")
    (store.root / "linked").symlink_to(outside)
    assert collect(store.root, min_age_s=0, delete=True).rows == []
    assert (outside / ".items" / "rows" / "x.parquet").is_file()

    manifest.write_text("{not json")
    with pytest.raises(CollectionRefused, match=r"manifest.json: unreadable .*mmedpo verify --repair"):
        collect(store.root, min_age_s=0)
    manifest.write_text(json.dumps(written))
    building = Path(current.path).parent / f"{TEMP_PREFIX}k-{OWNER}-x"
    building.mkdir()
    with pytest.raises(CollectionRefused, match="a build is in progress"):
        collect(store.root, min_age_s=0)
    assert os.path.isdir(building)


def test_a_dry_run_leaves_a_dead_builds_folder_and_only_a_deleting_run_removes_it(two_curations):
    store, _, _, current, _ = two_curations
    host = OWNER.rsplit("-", 1)[0]
    dead = Path(current.path).parent / f"{TEMP_PREFIX}k-{host}-999999999-x"  # no process has that pid
    dead.mkdir()
    collect(store.root, min_age_s=0)  # not refused: a dead build is not in progress
    assert dead.is_dir()  # and a dry run deletes nothing
    collect(store.root, min_age_s=0, delete=True)
    assert not dead.exists()


def test_gc_refuses_when_an_old_artifacts_table_cannot_be_read(two_curations):
    """An artifact from before file indexes names its blobs only in its tables: one that cannot be
    read might name blobs still in use, so gc refuses instead of deleting them."""
    store, old, old_files, current, _ = two_curations
    shutil.rmtree(old.path)
    manifest = Path(current.path) / MANIFEST
    written = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({k: v for k, v in written.items() if k != "index"}))
    assert {p.relative_to(store.root).as_posix() for p, _ in collect(store.root, min_age_s=0).blobs} == {
        name for name in old_files if name.startswith(BLOBS)
    }  # readable: its own blobs are found in its tables and kept
    (table,) = Path(current.path).glob("*.parquet")
    table.write_bytes(b"PAR1 damaged")
    with pytest.raises(CollectionRefused, match=r"a table is unreadable .*mmedpo verify --repair"):
        collect(store.root, min_age_s=0, delete=True)
    assert files(store.root) >= old_files  # nothing deleted
