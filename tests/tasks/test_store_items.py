"""The per-item cache: content keys, reuse across artifact keys, atomic items, shard-size independence."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.config import StageConfig
from tasks.store import SHARDS, ArtifactStore, SourceSnapshot, by_content
from tasks.store.items import InlineShards, StageFailed, shard_size
from tasks.store.packed import BLOBS, OldStoreLayout, read_index


class Options(StageConfig):
    k: int = 1


def doubler(calls: list):
    def compute(payloads, folders):
        calls.extend(p["id"] for p in payloads)
        rows = []
        for payload, folder in zip(payloads, folders):
            (folder / "out").mkdir(parents=True)
            (folder / "out" / f"{payload['id']}.txt").write_text(str(2 * payload["x"]))
            rows.append({"id": payload["id"], "path": f"out/{payload['id']}.txt"})
        return rows, {"calls": 1}

    return compute


def build(store: ArtifactStore, records: list[dict], version: str, calls: list, options: Options | None = None):
    options = options or Options()

    def run(out: Path) -> dict:
        items = store.items("double", "c1", options)
        rows = items.build(out, [items.item(by_content(r, ("id", "x")), r) for r in records], doubler(calls))
        (out / "rows.json").write_text(json.dumps(rows))
        return {"rows": len(rows), **items.counts}

    return store.run("double", "c1", options, {"sources": SourceSnapshot(name="raw", key=version)}, run)


def test_a_new_artifact_key_computes_only_new_items(tmp_path):
    store = ArtifactStore(tmp_path)
    records = [{"id": f"r{i}", "x": i} for i in range(4)]
    calls: list = []
    first = build(store, records, "v1", calls)
    assert first.work == {"computed": 4, "reused": 0} and outputs(first) == ["0", "2", "4", "6"]
    grown = build(store, records + [{"id": "r9", "x": 9}], "v2", calls)
    assert calls == ["r0", "r1", "r2", "r3", "r9"]
    assert grown.work == {"computed": 1, "reused": 4} and grown.counts == {"rows": 5, "calls": 1}
    # The artifact holds its manifest alone: the items' files are blobs of the store, named by content.
    assert grown.files == ["rows.json"] and outputs(grown) == ["0", "2", "4", "6", "18"]
    edited = build(store, [{"id": "r0", "x": 100}], "v3", calls)  # same id, new content: a new item
    assert edited.work == {"computed": 1, "reused": 0} and outputs(edited) == ["200"]
    other = build(store, records, "v4", calls, Options(k=2))  # the item config is part of the key
    assert other.work == {"computed": 4, "reused": 0}


def outputs(manifest) -> list[str]:
    """What each row's file holds, read through the artifact folder as a downstream stage reads it."""
    rows = json.loads(manifest.file("rows.json").read_text())
    assert all(row["path"].startswith(f"../../{BLOBS}/") for row in rows)
    return [manifest.file(row["path"]).read_text() for row in rows]


def test_files_are_keyed_by_content_not_location(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "m.png").write_bytes(b"mask")
    (tmp_path / "b" / "m.png").write_bytes(b"mask")
    row = {"id": "s", "mask": "m.png"}
    assert by_content(row, ("id",), {"mask": tmp_path / "a"}) == by_content(row, ("id",), {"mask": tmp_path / "b"})
    (tmp_path / "b" / "m.png").write_bytes(b"other mask")
    assert by_content(row, ("id",), {"mask": tmp_path / "a"}) != by_content(row, ("id",), {"mask": tmp_path / "b"})


def test_a_failing_shard_keeps_finished_items_and_publishes_no_partial_one(tmp_path):
    store = ArtifactStore(tmp_path)
    items = store.items("double", "c1", Options())
    good = [items.item({"id": "g"}, {"id": "g", "x": 1})]
    bad = [items.item({"id": "b"}, {"id": "b", "x": None})]

    def compute(payloads, folders):
        for folder in folders:
            folder.mkdir()
            (folder / "half.txt").write_text("partial")
        if any(p["x"] is None for p in payloads):
            raise RuntimeError("killed mid-shard")
        return [{"id": p["id"], "path": "half.txt"} for p in payloads], {}

    token = SHARDS.set(type("One", (InlineShards,), {"shard_size": 1})())
    try:
        with pytest.raises(RuntimeError):
            store.run("double", "c1", Options(), {}, lambda out: {"rows": len(items.build(out, good + bad, compute))})
    finally:
        SHARDS.reset(token)
    assert set(read_index(tmp_path, "double")) == {good[0].key}
    assert list((tmp_path / "double" / ".items" / ".tmp").iterdir()) == []
    assert store.list("double") == []


@pytest.mark.parametrize("shard_size", [1, 3, 64])
def test_rows_do_not_depend_on_the_shard_size(tmp_path, shard_size):
    store = ArtifactStore(tmp_path)
    token = SHARDS.set(type("Sized", (InlineShards,), {"shard_size": shard_size})())
    try:
        manifest = build(store, [{"id": f"r{i}", "x": i} for i in range(7)], "v1", [])
    finally:
        SHARDS.reset(token)
    assert (
        manifest.key
        == build(ArtifactStore(tmp_path / "other"), [{"id": f"r{i}", "x": i} for i in range(7)], "v1", []).key
    )
    assert outputs(manifest) == [str(2 * i) for i in range(7)]


def test_a_large_build_gets_larger_shards_not_more_of_them(tmp_path):
    calls: list = []
    shards: list[int] = []

    def counting(payloads, folders):
        shards.append(len(payloads))
        return doubler(calls)(payloads, folders)

    class Capped(InlineShards):
        shard_size, max_shards = 2, 4

    store = ArtifactStore(tmp_path)
    items = store.items("double", "c1", Options())
    records = [{"id": f"r{i}", "x": i} for i in range(21)]
    token = SHARDS.set(Capped())
    try:
        rows = items.build(tmp_path / "out", [items.item(by_content(r, ("id", "x")), r) for r in records], counting)
        few = items.build(tmp_path / "out", [items.item(by_content(r, ("id", "x")), r) for r in more(3)], counting)
    finally:
        SHARDS.reset(token)
    assert shards == [6, 6, 6, 3, 2, 1]  # 21 items: 4 shards of 6 at most; 3 new items: shards of the smallest size
    assert calls == [f"r{i}" for i in range(21)] + ["n0", "n1", "n2"]
    assert [row["id"] for row in rows] == [f"r{i}" for i in range(21)] and len(few) == 3


@pytest.mark.parametrize(
    ("missing", "smallest", "most", "workers", "size"),
    [
        (16_000, 128, 128, 2, 128),  # the smallest size: 125 shards
        (100_000, 128, 128, 2, 782),  # capped at 128 shards
        (500, 128, 128, 8, 63),  # a small build on 8 workers: 8 shards, not 4 of 128
        (100, 128, 128, 2, 50),  # 2 shards for 2 workers
        (1_000, 1, 4, 16, 250),  # more workers than max_shards: the cap holds
        (3, 128, 128, 8, 1),
        (0, 128, 128, 2, 1),
    ],
)
def test_shard_size_keeps_every_worker_busy_within_the_shard_cap(missing, smallest, most, workers, size):
    assert shard_size(missing, smallest, most, workers) == size


def more(n: int) -> list[dict]:
    return [{"id": f"n{i}", "x": i} for i in range(n)]


def test_a_shard_sweeps_its_scratch_folder_once_not_once_per_item(tmp_path, monkeypatch):
    from tasks.store import files

    sweeps: list[Path] = []
    monkeypatch.setattr(files, "sweep_abandoned", sweeps.append)
    store = ArtifactStore(tmp_path)
    items = store.items("double", "c1", Options())
    records = [{"id": f"r{i}", "x": i} for i in range(10)]
    token = SHARDS.set(type("Five", (InlineShards,), {"shard_size": 5})())
    try:
        items.build(tmp_path / "out", [items.item(by_content(r, ("id", "x")), r) for r in records], doubler([]))
    finally:
        SHARDS.reset(token)
    assert sweeps == [tmp_path / "double" / ".items" / ".tmp"] * 2


def test_an_item_folder_exists_only_once_its_item_writes_a_file(tmp_path):
    items = ArtifactStore(tmp_path).items("double", "c1", Options())
    made = []

    def compute(payloads, folders):
        made.extend(folder.exists() for folder in folders)
        folders[1].mkdir()  # only the second item writes a file
        (folders[1] / "m.txt").write_text("mask")
        return [{"id": p["id"], "path": "m.txt" if i == 1 else None} for i, p in enumerate(payloads)], {}

    records = [{"id": f"r{i}", "x": i} for i in range(3)]
    out = tmp_path / "double" / "key"  # an artifact folder: rows name blobs from it
    out.mkdir(parents=True)
    rows = items.build(out, [items.item(by_content(r, ("id", "x")), r) for r in records], compute)
    assert made == [False, False, False]  # no empty folder made and removed per item
    assert [row["path"] is None for row in rows] == [True, False, True]
    assert (out / rows[1]["path"]).read_text() == "mask"
    assert list((tmp_path / "double" / ".items" / ".tmp").iterdir()) == []


def test_a_build_reads_each_rows_file_once_and_checks_a_shared_blob_once(tmp_path, monkeypatch):
    from tasks.store import packed

    items, records = six_items_on_one_file(tmp_path)
    reads, checks = [], []
    read_rows, blob_problem = packed.read_rows, packed.blob_problem
    monkeypatch.setattr(packed, "read_rows", lambda path, wanted: reads.append(path.name) or read_rows(path, wanted))
    monkeypatch.setattr(packed, "blob_problem", lambda root, name: checks.append(name) or blob_problem(root, name))
    grown = records + [{"id": "r9", "x": 9}]
    rows = items.build(tmp_path / "out", [items.item(by_content(r, ("id", "x")), r) for r in grown], same_file)
    assert len(reads) == len(set(reads)) == 2  # the first build's rows file, then only the new shard's
    # Once by the read before the shard, once storing the new item's file, once reading its new row.
    assert len(checks) == 3 and len(set(checks)) == 1
    assert [row["id"] for row in rows] == [r["id"] for r in grown] and len({row["path"] for row in rows}) == 1


def test_after_its_shards_a_build_reads_only_their_new_rows_files(tmp_path, monkeypatch):
    from tasks.store import packed

    items, _ = six_items_on_one_file(tmp_path)  # another build's rows file, none of this build's items
    reads = []
    read_rows = packed.read_rows
    monkeypatch.setattr(packed, "read_rows", lambda path, wanted: reads.append(path.name) or read_rows(path, wanted))
    records = [{"id": f"other{i}", "x": i} for i in range(2)]
    items.build(tmp_path / "out", [items.item(by_content(r, ("id", "x")), r) for r in records], same_file)
    # The old file once (before the shards: it holds none of these items), the shard's new file once.
    assert len(reads) == len(set(reads)) == 2


def write_previous_layout(root: Path, stage: str, key: str, row: dict, files: dict[str, bytes]) -> Path:
    """An item as the previous layout stored it: ``<stage>/.items/<2>/<key>/row.json`` beside its files."""
    folder = root / stage / ".items" / key[:2] / key
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "row.json").write_text(json.dumps(row))
    return folder


def test_a_store_of_the_previous_layout_is_refused_then_migrated_by_one_command(tmp_path, capsys):
    from flows.cli import main

    store = ArtifactStore(tmp_path)
    items = store.items("double", "c1", Options())
    old = items.item(by_content({"id": "r1", "x": 1}, ("id", "x")), {"id": "r1", "x": 1})
    write_previous_layout(tmp_path, "double", old.key, {"id": "r1", "path": "out/r1.txt"}, {"out/r1.txt": b"2"})
    killed = write_previous_layout(tmp_path, "double", "ab" + "0" * 30, {}, {"out/x.txt": b"partial"})
    (killed / "row.json").unlink()  # a shard killed under the previous layout: never an item
    calls: list = []
    with pytest.raises(OldStoreLayout, match=r"mmedpo store migrate --root .*"):
        build(store, [{"id": "r1", "x": 1}], "v1", calls)
    assert calls == []

    assert main(["store", "migrate", "--root", str(tmp_path)]) == 0
    assert "double: 1 items packed" in capsys.readouterr().out
    assert not any((tmp_path / "double" / ".items").glob("??"))
    manifest = build(store, [{"id": "r1", "x": 1}, {"id": "r2", "x": 2}], "v1", calls)
    assert calls == ["r2"] and manifest.work == {"computed": 1, "reused": 1}
    assert outputs(manifest) == ["2", "4"]
    assert main(["store", "migrate", "--root", str(tmp_path)]) == 0  # again: nothing left to do
    assert "already" in capsys.readouterr().out


def test_migrating_a_missing_store_is_one_line_on_the_command_line(tmp_path, capsys):
    from flows.cli import main

    assert main(["store", "migrate", "--root", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err.strip() == f"mmedpo: error: {tmp_path / 'absent'}: no store there"


def test_an_unreadable_rows_file_costs_its_items_a_recompute_not_the_run(tmp_path):
    store = ArtifactStore(tmp_path)
    calls: list = []
    build(store, [{"id": "r1", "x": 1}], "v1", calls)
    rows_files = list((tmp_path / "double" / ".items" / "rows").glob("*.parquet"))
    assert len(rows_files) == 1
    rows_files[0].write_bytes(b"PAR1 truncated by a full disk")
    (rows_files[0].parent / "other.parquet").write_text("not parquet either")
    again = build(store, [{"id": "r1", "x": 1}], "v2", calls)
    assert calls == ["r1", "r1"] and again.work == {"computed": 1, "reused": 0} and outputs(again) == ["2"]


@pytest.mark.parametrize(
    "columns",
    [{"key": ["k"], "other": ["{}"]}, {"key": ["k"], "row": [1]}, {"key": ["k"]}],
    ids=["renamed", "retyped", "missing"],
)
def test_a_rows_file_of_another_schema_costs_its_items_a_recompute(tmp_path, columns):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = ArtifactStore(tmp_path)
    calls: list = []
    build(store, [{"id": "r1", "x": 1}], "v1", calls)
    (rows_file,) = (tmp_path / "double" / ".items" / "rows").glob("*.parquet")
    key = pq.read_table(rows_file).column("key")[0].as_py()
    pq.write_table(pa.table({name: [key] if name == "key" else v for name, v in columns.items()}), rows_file)
    again = build(store, [{"id": "r1", "x": 1}], "v2", calls)
    assert calls == ["r1", "r1"] and again.work == {"computed": 1, "reused": 0} and outputs(again) == ["2"]


@pytest.mark.parametrize(
    "row", ['{"id": "r1"}, {"id": "r9"}', "[1]", "", '{"id": "r1"'], ids=["two", "list", "empty", "cut"]
)
def test_a_row_that_is_not_one_json_object_costs_its_file_a_recompute(tmp_path, row):
    """A file's rows are decoded as one document: a row holding two objects must not shift the keys."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tasks.store.packed import ROW_SCHEMA

    store = ArtifactStore(tmp_path)
    calls: list = []
    build(store, [{"id": "r1", "x": 1}], "v1", calls)
    (rows_file,) = (tmp_path / "double" / ".items" / "rows").glob("*.parquet")
    key = pq.read_table(rows_file).column("key")[0].as_py()
    pq.write_table(pa.table({"key": [key], "row": [row]}, schema=ROW_SCHEMA), rows_file)
    assert read_index(tmp_path, "double") == {}
    again = build(store, [{"id": "r1", "x": 1}], "v2", calls)
    assert calls == ["r1", "r1"] and again.work == {"computed": 1, "reused": 0} and outputs(again) == ["2"]


def test_an_item_whose_blob_is_gone_is_computed_again(tmp_path):
    store = ArtifactStore(tmp_path)
    calls: list = []
    first = build(store, [{"id": "r1", "x": 1}, {"id": "r2", "x": 2}], "v1", calls)
    gone = json.loads(first.file("rows.json").read_text())[0]["path"]
    first.file(gone).unlink()
    again = build(store, [{"id": "r1", "x": 1}, {"id": "r2", "x": 2}], "v2", calls)
    assert calls == ["r1", "r2", "r1"] and again.work == {"computed": 1, "reused": 1}
    assert outputs(again) == ["2", "4"]


def test_item_keys_are_the_content_hash_of_stage_code_identity_and_content(tmp_path):
    """Keys made from a stage's shared prefix equal the full hash: stores written before still match."""
    from tasks.store.keys import content_hash

    items = ArtifactStore(tmp_path).items("double", "c1", Options(k=3))
    content = {"id": "r1", "x": [1, 2], "text": "é"}
    assert items.item(content, None).key == content_hash(
        "item", "double", "c1", items.identity, content, length=len(items.item(content, None).key)
    )
    assert items.item(content, None).key != items.item({**content, "x": [2, 1]}, None).key


def test_a_build_holds_only_its_own_items_rows_and_shared_rows_are_separate_dicts(tmp_path):
    items, records = six_items_on_one_file(tmp_path)
    work = [items.item(by_content(r, ("id", "x")), r) for r in records]
    assert set(read_index(tmp_path, "double", wanted={work[1].key, "absent"})) == {work[1].key}
    # Two samples on one item (one noised image for two questions) each get their own row.
    first, second = items.build(tmp_path / "out", [work[2], work[2]], same_file)
    first["id"] = "changed"
    assert second == {"id": "r2", "path": first["path"]}


def same_file(payloads, folders):
    for folder in folders:
        folder.mkdir()
        (folder / "m.txt").write_text("one mask for every question on the image")
    return [{"id": p["id"], "path": "m.txt"} for p in payloads], {}


def six_items_on_one_file(tmp_path):
    """A built stage of six items whose rows all name one blob."""
    items = ArtifactStore(tmp_path).items("double", "c1", Options())
    records = [{"id": f"r{i}", "x": i} for i in range(6)]
    items.build(tmp_path / "out", [items.item(by_content(r, ("id", "x")), r) for r in records], same_file)
    return items, records


def test_a_table_build_gives_the_rows_build_gives_and_recomputes_an_item_whose_blob_is_gone(tmp_path):
    import pyarrow as pa

    schema = pa.schema([pa.field("id", pa.string()), pa.field("path", pa.string())])
    store = ArtifactStore(tmp_path)
    items = store.items("double", "c1", Options())
    records = [{"id": f"r{i}", "x": i} for i in range(3)]
    work = [items.item(by_content(r, ("id", "x")), r) for r in records]
    calls: list = []
    rows = items.build(tmp_path / "out", work, doubler(calls))
    # In the items' order, an item two samples share on both rows; nothing computed again.
    table = items.build_table(tmp_path / "out", [work[2], work[0], work[2]], doubler(calls), schema)
    assert table.schema == schema and table.to_pylist() == [rows[2], rows[0], rows[2]]
    assert calls == ["r0", "r1", "r2"]
    (tmp_path / BLOBS / rows[1]["path"].split(f"{BLOBS}/")[1]).unlink()
    again = items.build_table(tmp_path / "out", work, doubler(calls), schema)
    assert calls == ["r0", "r1", "r2", "r1"] and again.column("id").to_pylist() == ["r0", "r1", "r2"]
    assert (tmp_path / BLOBS / again.column("path")[1].as_py().split(f"{BLOBS}/")[1]).read_text() == "2"


def test_a_table_build_recomputes_a_rows_file_whose_rows_do_not_fit_its_schema(tmp_path):
    import pyarrow as pa

    store = ArtifactStore(tmp_path)
    items = store.items("double", "c1", Options())
    work = [items.item(by_content(r, ("id", "x")), r) for r in [{"id": "r1", "x": 1}]]
    calls: list = []
    items.build(tmp_path / "out", work, doubler(calls))
    # The cached row has a "path" field this schema lacks: its file is unreadable as this table.
    narrow = pa.schema([pa.field("id", pa.string())])
    with pytest.raises(StageFailed, match="1 items were not computed"):
        items.build_table(tmp_path / "out", work, doubler(calls), narrow)
    assert calls == ["r1", "r1"]
