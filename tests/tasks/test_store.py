"""The store's promises: content keys, cache hits, atomic publication, lineage."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.config import StageConfig
from tasks.store import ArtifactStore, DigestMemo, SourceSnapshot, stage_key


class Options(StageConfig):
    k: int = 1


def writer(calls: list, payload: str = "payload"):
    def build(out: Path) -> dict:
        calls.append(out)
        (out / "data.txt").write_text(payload)
        (out / "sub").mkdir()
        (out / "sub" / "x.bin").write_bytes(b"1")
        return {"rows": 1}

    return build


def test_second_run_is_a_cache_hit_and_config_changes_the_key(tmp_path):
    store = ArtifactStore(tmp_path)
    source = SourceSnapshot(name="raw", key="abc")
    calls: list = []
    first = store.run("ingest", "code1", Options(), {"sources": source}, writer(calls))
    again = store.run("ingest", "code1", Options(), {"sources": source}, writer(calls))
    assert len(calls) == 1 and again == first
    assert first.files == ["data.txt", "sub/x.bin"] and first.file("data.txt").read_text() == "payload"
    assert first.counts == {"rows": 1} and first.config == {"k": 1} and first.inputs == {"sources": "abc"}
    changed = store.run("ingest", "code1", Options(k=2), {"sources": source}, writer(calls))
    new_code = store.run("ingest", "code2", Options(), {"sources": source}, writer(calls))
    assert len({first.key, changed.key, new_code.key}) == 3 and len(calls) == 3
    assert Path(first.path).is_dir()  # older versions stay intact


def test_downstream_key_follows_upstream_content_and_lineage_is_transitive(tmp_path):
    store = ArtifactStore(tmp_path)
    up1 = store.run("ingest", "c", Options(k=1), {"sources": SourceSnapshot(name="s", key="1")}, writer([], "one"))
    up2 = store.run("ingest", "c", Options(k=2), {"sources": SourceSnapshot(name="s", key="1")}, writer([], "two"))
    down1 = store.run("localize", "c", Options(), {"ingest": up1}, writer([]))
    down2 = store.run("localize", "c", Options(), {"ingest": up2}, writer([]))
    assert up1.digest != up2.digest and down1.key != down2.key
    assert down1.lineage == sorted([f"ingest/{up1.key}", "source:sources/1"])
    assert down1.inputs == {"ingest": up1.key} and down1.input_digests == {"ingest": up1.digest}
    assert stage_key("localize", "c", Options(), {"ingest": up1}) == down1.key


def test_early_cutoff_an_upstream_rebuilt_to_the_same_content_leaves_downstream_cached(tmp_path):
    store = ArtifactStore(tmp_path)
    calls: list = []
    old = store.run("ingest", "code1", Options(), {}, writer([], "same"))
    new = store.run("ingest", "code2", Options(), {}, writer([], "same"))  # new code, same bytes
    assert new.key != old.key and new.digest == old.digest
    down = store.run("localize", "c", Options(), {"ingest": old}, writer(calls))
    assert store.run("localize", "c", Options(), {"ingest": new}, writer(calls)) == down and len(calls) == 1


def test_volatile_files_do_not_change_the_digest(tmp_path):
    store = ArtifactStore(tmp_path)

    def build(log: str):
        def run(out: Path) -> dict:
            (out / "adapter.bin").write_bytes(b"weights")
            (out / "log_history.json").write_text(log)
            return {}

        return run

    first = store.run("train", "c", Options(k=1), {}, build("0.1 s"), volatile=("log_history.json",))
    second = store.run("train", "c", Options(k=2), {}, build("0.2 s"), volatile=("log_history.json",))
    third = store.run("train", "c", Options(k=3), {}, build("0.2 s"))
    assert first.digest == second.digest != third.digest


def test_failed_build_leaves_nothing_behind(tmp_path):
    store = ArtifactStore(tmp_path)

    def broken(out: Path) -> dict:
        (out / "half.parquet").write_text("partial")
        raise RuntimeError("killed mid-stage")

    with pytest.raises(RuntimeError):
        store.run("noise", "c", Options(), {}, broken)
    assert list((tmp_path / "noise").iterdir()) == []
    assert store.list("noise") == []


def test_content_digest_sees_new_and_changed_bytes_but_not_times_or_places(tmp_path, monkeypatch):
    import os
    import shutil

    root = tmp_path / "root"
    root.mkdir()
    (root / "a.txt").write_text("1")
    memo = DigestMemo(tmp_path / "digests.sqlite")
    before = memo.tree(root)
    assert memo.tree(root) == before
    os.utime(root / "a.txt", ns=(1, 1))  # touched
    assert memo.tree(root) == before
    shutil.copytree(root, tmp_path / "copy")  # copied afresh elsewhere
    assert memo.tree(tmp_path / "copy") == before
    (root / "b.txt").write_text("2")
    assert memo.tree(root) != before
    (root / "b.txt").write_text("3")  # same size, same name, new bytes
    changed = memo.tree(root)
    (root / "b.txt").write_text("2")
    assert memo.tree(root) != changed
    assert memo.tree(root / "a.txt") != memo.tree(tmp_path / "missing") == "missing"
    # Remembered across processes: a fresh memo on the same database reads no file again.
    import tasks.store.keys as keys

    expected = memo.tree(root)
    again = DigestMemo(tmp_path / "digests.sqlite")
    monkeypatch.setattr(keys, "_read_digest", lambda path: pytest.fail(f"{path} was read again"))
    assert again.tree(root) == expected


def test_a_folder_walk_commits_its_new_digests_in_batches_not_one_a_file(tmp_path, monkeypatch):
    import tasks.store.keys as keys

    root = tmp_path / "root"
    root.mkdir()
    for i in range(7):
        (root / f"{i}.txt").write_text(str(i))
    memo = DigestMemo(tmp_path / "digests.sqlite")
    statements: list[str] = []
    memo.db.set_trace_callback(statements.append)
    monkeypatch.setattr(keys, "MEMO_BATCH", 3)
    expected = memo.tree(root)
    # 7 new files in batches of 3: three commits (a commit waits for the disk), not seven.
    assert statements.count("COMMIT") == 3
    statements.clear()
    assert DigestMemo(tmp_path / "digests.sqlite").tree(root) == expected == memo.tree(root)
    assert "COMMIT" not in statements  # all of them remembered


def test_operational_fields_are_echoed_but_never_change_a_key(tmp_path):
    from tasks.config import EndpointConfig, HallucinateConfig, NoiseConfig

    store = ArtifactStore(tmp_path)
    calls: list = []
    two = store.run("noise", "c", NoiseConfig(workers=2), {}, writer(calls))
    eight = store.run("noise", "c", NoiseConfig(workers=8), {}, writer(calls))
    assert eight.key == two.key and len(calls) == 1 and two.config["workers"] == 2
    assert store.run("noise", "c", NoiseConfig(k=300), {}, writer(calls)).key != two.key
    # Endpoint tuning and the name of the key variable are operational; which model answers is not.
    base = HallucinateConfig(backend="llm", llm=EndpointConfig(model="m"))
    tuned = HallucinateConfig(
        backend="llm",
        llm=EndpointConfig(model="m", max_concurrency=2, timeout_s=5, api_key_env="K"),
        cache_dir=tmp_path,
    )
    other = HallucinateConfig(backend="llm", llm=EndpointConfig(model="other"))
    assert (
        stage_key("hallucinate", "c", tuned, {})
        == stage_key("hallucinate", "c", base, {})
        != stage_key("hallucinate", "c", other, {})
    )


def test_sweep_removes_only_what_dead_processes_left(tmp_path):
    import os
    import socket
    import subprocess
    import sys

    from tasks.store.files import OWNER, sweep_abandoned

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    ).stdout.strip()
    host = socket.gethostname()
    left = tmp_path / f".tmp-abc-{host}-{dead}-x1"
    mine = tmp_path / f".tmp-abc-{OWNER}-x2"
    remote = tmp_path / f".tmp-abc-another-host-{dead}-x3"
    for folder in (left, mine, remote):
        folder.mkdir()
    sweep_abandoned(tmp_path)
    assert not left.exists() and mine.exists() and remote.exists()
    assert str(os.getpid()) in OWNER


def test_prefect_cache_key_names_the_store_and_the_artifacts_instance(tmp_path):
    import shutil

    from tasks.store import StageCachePolicy

    policy = StageCachePolicy("stage", "c1")
    one, two = ArtifactStore(tmp_path / "one"), ArtifactStore(tmp_path / "two")

    def key(store: ArtifactStore) -> str:
        return policy.compute_key(None, {"store_root": str(store.root), "config": Options()}, {})

    first = key(one)
    assert first != key(two)  # equal definitions, different stores: never each other's artifact
    built = one.run("stage", "c1", Options(), {}, lambda out: {"rows": 1})
    assert key(one) == first  # built under that key: Prefect's record for it is the one to reuse
    shutil.rmtree(built.path)
    after = key(one)
    assert after != first  # deleted: a record made before cannot hand out its manifest
    one.run("stage", "c1", Options(), {}, lambda out: {"rows": 1})
    assert key(one) == after
    # The whole store deleted and curated again (a counter kept in the store would restart and
    # meet the records of the first life): every instance is new.
    seen = {first, after}
    for _ in range(3):
        shutil.rmtree(one.root)
        again = key(one)
        one.run("stage", "c1", Options(), {}, lambda out: {"rows": 1})
        assert again not in seen and key(one) == again
        seen.add(again)


def test_a_nan_counter_survives_the_manifest(tmp_path):
    import math

    store = ArtifactStore(tmp_path)
    built = store.run("measure", "c", Options(), {}, lambda out: {"sensitivity": float("nan"), "rows": 1.0})
    again = store.get("measure", built.key)
    assert again is not None and math.isnan(again.counts["sensitivity"]) and again.counts["rows"] == 1.0


def test_published_artifacts_have_the_umasks_modes_not_tempfiles_private_ones(tmp_path, monkeypatch):
    from tasks.store import files

    monkeypatch.setattr(files, "UMASK", 0o022)  # the usual umask, whatever this process runs under
    store = ArtifactStore(tmp_path)
    manifest = store.run("ingest", "c", Options(), {"sources": SourceSnapshot(name="s", key="1")}, writer([]))
    assert Path(manifest.path).stat().st_mode & 0o777 == 0o755
    assert Path(manifest.path, "manifest.json").stat().st_mode & 0o777 == 0o644


def test_manifest_records_the_builds_cpu_time_beside_its_wall_time(tmp_path):
    import time

    store = ArtifactStore(tmp_path)

    def waits(out: Path) -> dict:
        time.sleep(0.3)  # a build waiting (on a busy machine, a server) costs wall time, not CPU
        return {}

    def works(out: Path) -> dict:
        started = time.process_time()
        while time.process_time() - started < 0.3:
            pass
        return {}

    waited = store.run("ingest", "c", Options(k=1), {}, waits)
    worked = store.run("ingest", "c", Options(k=2), {}, works)
    assert waited.seconds >= 0.3 and waited.cpu_seconds < 0.15
    assert worked.cpu_seconds >= 0.3
    assert ArtifactStore(tmp_path).get("ingest", worked.key).cpu_seconds == worked.cpu_seconds


def test_stage_code_allocates_arrow_memory_from_the_system_allocator():
    import pyarrow as pa

    import tasks  # noqa: F401 - importing the stages sets the pool

    # mimalloc, Arrow's default, held what shard threads freed: peak RSS grew with the samples.
    assert pa.default_memory_pool().backend_name == "system"
