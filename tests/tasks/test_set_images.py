"""A new set version links the unchanged data-root images of the name's previous version, never
the data root itself, and never carries over a published file that was edited."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from tasks.assemble import assemble
from tasks.config import AssembleConfig
from tasks.sets import latest_images, publish
from tasks.store import ArtifactStore
from tasks.store.artifacts import inspect_artifact
from tests.tasks.test_assemble import run, scene, score_artifact


def chosen_of(folder: Path, pair_id: str) -> Path:
    pairs = pq.read_table(folder / "data" / "train-00000-of-00001.parquet").to_pylist()
    return folder / next(p["chosen_image"] for p in pairs if p["pair_id"] == pair_id)


def next_version(tmp_path: Path, store: ArtifactStore, inputs: dict, previous: Path | None):
    """The scene again with one weight changed: a new version, the same images."""
    ids = [r["sample_id"] for r in pq.read_table(inputs["ingest"].file("samples.parquet")).to_pylist()]
    changed = {**inputs, "score": score_artifact(store, ids, 0.9)}
    return assemble(store, AssembleConfig(), **changed, previous=previous), changed


def test_a_new_version_links_its_predecessors_unchanged_images_and_leaves_it_intact(tmp_path):
    store, inputs = scene(tmp_path)
    sets = tmp_path / "sets"
    assert latest_images(sets, "demo") is None  # nothing published yet: every image is copied
    old = publish(run(store, inputs), sets, "demo")
    old_image = chosen_of(old, "d:train:a#visual")
    old_bytes = old_image.read_bytes()
    assert latest_images(sets, "demo") == old / "images"

    second, changed = next_version(tmp_path, store, inputs, latest_images(sets, "demo"))
    new = publish(second, sets, "demo")
    new_image = chosen_of(new, "d:train:a#visual")
    assert new != old and new_image.name == old_image.name
    # Linked from the previous version (no copy), byte-identical to the data root's file, which
    # stays out of the link: a sync rewriting it in place reaches no set.
    assert new_image.stat().st_ino == old_image.stat().st_ino
    assert new_image.read_bytes() == (tmp_path / "a.png").read_bytes() == old_bytes
    assert new_image.stat().st_ino != (tmp_path / "a.png").stat().st_ino
    # The old version is whole, and the new one is the version a build without it makes.
    assert inspect_artifact(old)[1] == [] and inspect_artifact(new)[1] == []
    alone = assemble(ArtifactStore(tmp_path / "other"), AssembleConfig(), **changed)
    assert alone.digest == second.digest


def test_an_edited_published_image_is_not_carried_into_the_next_version(tmp_path):
    store, inputs = scene(tmp_path)
    old = publish(run(store, inputs), tmp_path / "sets", "demo")
    edited = chosen_of(old, "d:train:a#visual")
    edited.unlink()  # replaced, not rewritten in place: the store's artifact keeps its own file
    edited.write_bytes(b"edited by hand")

    second, _ = next_version(tmp_path, store, inputs, old / "images")
    image = chosen_of(Path(second.path), "d:train:a#visual")
    assert image.read_bytes() == (tmp_path / "a.png").read_bytes()
    assert image.stat().st_ino != edited.stat().st_ino


def test_a_link_in_the_previous_version_is_not_followed(tmp_path):
    store, inputs = scene(tmp_path)
    old = publish(run(store, inputs), tmp_path / "sets", "demo")
    image = chosen_of(old, "d:train:a#visual")
    image.unlink()
    image.symlink_to(tmp_path / "a.png")  # same bytes, but the data root's own file

    second, _ = next_version(tmp_path, store, inputs, old / "images")
    copied = chosen_of(Path(second.path), "d:train:a#visual")
    assert not copied.is_symlink() and copied.stat().st_ino != (tmp_path / "a.png").stat().st_ino
    assert copied.read_bytes() == (tmp_path / "a.png").read_bytes()


def test_a_latest_naming_a_path_elsewhere_or_a_damaged_set_means_no_reuse_not_a_failure(tmp_path):
    store, inputs = scene(tmp_path)
    sets = tmp_path / "sets"
    old = publish(run(store, inputs), sets, "demo")
    outside = tmp_path / "outside"
    (outside / "images").mkdir(parents=True)
    for named in ("../../outside", str(outside)):
        (sets / "demo" / "LATEST").write_text(f"{named}\n")
        # Not followed: the published versions are scanned instead.
        assert latest_images(sets, "demo") == old / "images"
    (old / "manifest.json").write_text("{ damaged")
    assert latest_images(sets, "demo") is None


def test_the_next_version_reads_no_image_it_links_from_the_store_or_the_previous_version(tmp_path, monkeypatch):
    from tasks.store import keys

    store, inputs = scene(tmp_path)
    old = publish(run(store, inputs), tmp_path / "sets", "demo")
    read: list[str] = []
    real = keys._read_digest
    monkeypatch.setattr(keys, "_read_digest", lambda path: read.append(str(path)) or real(path))

    second, _ = next_version(tmp_path, store, inputs, latest_images(tmp_path / "sets", "demo"))
    images = sorted(Path(second.path, "images").iterdir())
    assert images and all(image.stat().st_ino == (old / "images" / image.name).stat().st_ino for image in images)
    # Noised images by their blob names, the previous version's by the digests its publishing kept.
    assert [path for path in read if "images" in Path(path).parts or ".blobs" in Path(path).parts] == []
