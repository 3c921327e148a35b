"""The per-item cache: content keys, reuse across artifact keys, atomic items, shard-size independence."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import StageConfig
from tasks.store import SHARDS, ArtifactStore, SourceSnapshot, by_content
from tasks.store.items import InlineShards, item_folder


class Options(StageConfig):
    k: int = 1


def doubler(calls: list):
    def compute(payloads, folders):
        calls.extend(p["id"] for p in payloads)
        rows = []
        for payload, folder in zip(payloads, folders):
            (folder / "out").mkdir()
            (folder / "out" / f"{payload['id']}.txt").write_text(str(2 * payload["x"]))
            rows.append({"id": payload["id"], "path": f"out/{payload['id']}.txt"})
        return rows, {"calls": 1}

    return compute


def build(store: ArtifactStore, records: list[dict], version: str, calls: list, options: Options | None = None):
    options = options or Options()

    def run(out: Path) -> dict:
        items = store.items("double", "c1", options)
        rows = items.build(out, [items.item(by_content(r, ("id", "x")), r) for r in records], doubler(calls))
        return {"rows": len(rows), **items.counts}

    return store.run("double", "c1", options, {"sources": SourceSnapshot(name="raw", key=version)}, run)


def test_a_new_artifact_key_computes_only_new_items(tmp_path):
    store = ArtifactStore(tmp_path)
    records = [{"id": f"r{i}", "x": i} for i in range(4)]
    calls: list = []
    first = build(store, records, "v1", calls)
    assert first.work == {"computed": 4, "reused": 0} and first.file("out/r3.txt").read_text() == "6"
    grown = build(store, records + [{"id": "r9", "x": 9}], "v2", calls)
    assert calls == ["r0", "r1", "r2", "r3", "r9"]
    assert grown.work == {"computed": 1, "reused": 4} and grown.counts == {"rows": 5, "calls": 1}
    assert grown.files == sorted([f"out/r{i}.txt" for i in (0, 1, 2, 3, 9)])
    edited = build(store, [{"id": "r0", "x": 100}], "v3", calls)  # same id, new content: a new item
    assert edited.work == {"computed": 1, "reused": 0} and edited.file("out/r0.txt").read_text() == "200"
    other = build(store, records, "v4", calls, Options(k=2))  # the item config is part of the key
    assert other.work == {"computed": 4, "reused": 0}


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
            (folder / "half.txt").write_text("partial")
        if any(p["x"] is None for p in payloads):
            raise RuntimeError("killed mid-shard")
        return [{"id": p["id"]} for p in payloads], {}

    token = SHARDS.set(type("One", (InlineShards,), {"shard_size": 1})())
    try:
        with pytest.raises(RuntimeError):
            store.run("double", "c1", Options(), {}, lambda out: {"rows": len(items.build(out, good + bad, compute))})
    finally:
        SHARDS.reset(token)
    assert (item_folder(tmp_path, "double", good[0].key) / "row.json").is_file()
    assert not item_folder(tmp_path, "double", bad[0].key).exists()
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
    assert [manifest.file(f"out/r{i}.txt").read_text() for i in range(7)] == [str(2 * i) for i in range(7)]
