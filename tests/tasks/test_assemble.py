"""The preference set: schema, versioning, leakage, ablations, loading where users expect."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tasks import catalog
from tasks.assemble import assemble
from tasks.config import AssembleConfig, StageConfig
from tasks.sets import load_pairs, publish, resolve_set, to_trl_records
from tasks.store import ArtifactStore, Manifest
from tests.support.samples import ingest_manifest, sample_row, write_image


class Fixture(StageConfig):
    tag: str = ""


def artifact(
    store: ArtifactStore,
    stage: str,
    rows: list[dict],
    declared: catalog.Artifact,
    files: dict[str, np.ndarray] | None = None,
    tag: str = "",
) -> Manifest:
    def build(out: Path) -> dict:
        for relative, pixels in (files or {}).items():
            write_image(out / relative, pixels)
        catalog.write(out, declared, rows)
        return {"rows": len(rows)}

    return store.run(stage, "fixture", Fixture(tag=tag), {}, build)


def scene(tmp_path: Path) -> tuple[ArtifactStore, dict[str, Manifest]]:
    """Three train samples (one sharing a test image, one with a resized copy of it), one test sample."""
    rng = np.random.default_rng(0)
    pixels = {name: rng.integers(0, 256, (48, 48), dtype=np.uint8) for name in ("a", "b", "test")}
    paths = {name: write_image(tmp_path / f"{name}.png", p) for name, p in pixels.items()}
    resized = tmp_path / "test_copy.jpg"
    Image.fromarray(pixels["test"]).resize((96, 96), Image.Resampling.NEAREST).save(resized, quality=95)
    samples = [
        sample_row(
            "d:train:a",
            paths["a"],
            boxes=[[4, 4, 20, 20]],
            question="Is there a lesion?",
            answer="yes",
            answer_type="closed",
        ),
        sample_row("d:train:b", paths["b"], question="Where is the lesion?", answer="left lobe"),
        sample_row("d:train:leak", paths["test"], question="Is this normal?", answer="no"),
        sample_row("d:train:copy", resized, question="What organ?", answer="liver"),
        sample_row("d:test:t", paths["test"], split="test", question="Is there a lesion?", answer="no"),
    ]
    store = ArtifactStore(tmp_path / "store")
    ids = [s["sample_id"] for s in samples]
    ingest = ingest_manifest(store, samples)
    regions = artifact(
        store,
        "localize",
        [
            {
                "sample_id": i,
                "status": "ok" if i == "d:train:a" else "no_region",
                "reason": None if i == "d:train:a" else "no_annotation",
                "source": "annotation",
                "mask_path": "masks/a.png" if i == "d:train:a" else None,
                "boxes": [],
                "confidence": 1.0 if i == "d:train:a" else None,
                "area_fraction": 0.1 if i == "d:train:a" else None,
            }
            for i in ids
        ],
        catalog.REGIONS,
    )
    noised = artifact(
        store,
        "noise",
        [
            {
                "sample_id": i,
                "status": "ok" if i == "d:train:a" else "skipped",
                "reason": None,
                "noised_path": "images/a.png" if i == "d:train:a" else None,
                "mode": "local",
                "k": 500,
                "seed": 1,
            }
            for i in ids
        ],
        catalog.NOISED,
        files={"images/a.png": 255 - pixels["a"]},
    )
    hallucinations = artifact(
        store,
        "hallucinate",
        [
            {
                "sample_id": "d:train:a",
                "rejected": "no",
                "backend": "rules",
                "error_type": "yes_no_flip",
                "candidates": None,
                "attempts": 1,
                "status": "ok",
                "reason": None,
            },
            {
                "sample_id": "d:train:b",
                "rejected": "right lobe",
                "backend": "rules",
                "error_type": "laterality",
                "candidates": None,
                "attempts": 1,
                "status": "ok",
                "reason": None,
            },
            {
                "sample_id": "d:train:leak",
                "rejected": "yes",
                "backend": "rules",
                "error_type": "yes_no_flip",
                "candidates": None,
                "attempts": 1,
                "status": "ok",
                "reason": None,
            },
            {
                "sample_id": "d:train:copy",
                "rejected": "spleen",
                "backend": "rules",
                "error_type": "organ_swap",
                "candidates": None,
                "attempts": 1,
                "status": "ok",
                "reason": None,
            },
        ],
        catalog.HALLUCINATIONS,
    )
    scores = score_artifact(store, ids, 1.1)
    return store, {
        "ingest": ingest,
        "localize": regions,
        "noise": noised,
        "hallucinate": hallucinations,
        "score": scores,
    }


def score_artifact(store: ArtifactStore, ids: list[str], text_weight: float) -> Manifest:
    rows = [
        {
            "sample_id": i,
            "pair_type": "text",
            "raw_score": 0.9,
            "weight": text_weight,
            "status": "ok",
            "reason": "single_judge",
            "error_type": None,
            "mode": "debate",
            "rounds": [],
            "n_rounds": 1,
            "judges_used": ["rules"],
        }
        for i in ids[:4]
    ] + [
        {
            "sample_id": "d:train:a",
            "pair_type": "visual",
            "raw_score": 1.0,
            "weight": 1.25,
            "status": "ok",
            "reason": None,
            "error_type": None,
            "mode": "localizer",
            "rounds": [],
            "n_rounds": 0,
            "judges_used": ["localizer:annotation"],
        }
    ]
    return artifact(store, "score", rows, catalog.SCORES, tag=str(text_weight))


def run(store: ArtifactStore, inputs: dict[str, Manifest], **config) -> Manifest:
    return assemble(store, AssembleConfig(**config), **inputs)


def test_pairs_schema_leakage_and_self_contained_images(tmp_path):
    store, inputs = scene(tmp_path)
    manifest = run(store, inputs)
    folder = Path(manifest.path)
    data = pq.read_table(folder / "data" / "train-00000-of-00001.parquet")
    assert data.schema.equals(catalog.PAIRS.schema, check_metadata=False)
    pairs = {r["pair_id"]: r for r in data.to_pylist()}
    assert set(pairs) == {"d:train:a#text", "d:train:a#visual", "d:train:b#text"}
    visual = pairs["d:train:a#visual"]
    assert (visual["chosen"], visual["rejected"], visual["weight"], visual["error_type"]) == (
        "yes",
        "yes",
        1.25,
        "lesion_noise_local",
    )
    assert (
        visual["chosen_image"] != visual["rejected_image"]
        and pairs["d:train:a#text"]["rejected_image"] == pairs["d:train:a#text"]["chosen_image"]
    )
    assert "ingest_key" not in visual  # lineage lives in the manifest: the pairs are content alone
    # Images live inside the set, named by content, so the folder travels alone.
    assert not Path(visual["rejected_image"]).is_absolute() and (folder / visual["rejected_image"]).is_file()
    # A data root's image is copied (a sync rewriting it in place must not reach the set); the
    # store's noised image, which never changes, is linked.
    assert (folder / visual["chosen_image"]).stat().st_ino != (tmp_path / "a.png").stat().st_ino
    assert (folder / visual["rejected_image"]).stat().st_nlink > 1
    assert np.array_equal(
        np.asarray(Image.open(folder / visual["rejected_image"])), 255 - np.asarray(Image.open(tmp_path / "a.png"))
    )
    dropped = {
        (r["sample_id"], r["pair_type"]): r["reason"] for r in pq.read_table(folder / "dropped.parquet").to_pylist()
    }
    assert dropped == {
        ("d:train:leak", None): "leak_test_image",
        ("d:train:copy", None): "leak_test_near_duplicate_image",
        ("d:train:b", "visual"): "region_no_region",
    }
    assert (
        manifest.counts["pairs.built"] == 3
        and manifest.counts["samples.held_out.test"] == 1
        and manifest.counts["samples.dropped.leak_test_image"] == 1
    )
    card = (folder / "CARD.md").read_text()
    assert (
        "| fixture | text | 2 |" in card
        and "| leak_test_image | 1 |" in card
        and "Mean rejected / chosen length ratio" in card
    )


def test_version_is_stable_and_a_changed_weight_makes_a_new_one(tmp_path):
    store, inputs = scene(tmp_path)
    first = run(store, inputs)
    assert run(store, inputs) == first
    ids = [r["sample_id"] for r in pq.read_table(inputs["ingest"].file("samples.parquet")).to_pylist()]
    second = run(store, {**inputs, "score": score_artifact(store, ids, 0.9)})
    assert second.key != first.key and second.digest != first.digest
    sets = tmp_path / "sets"
    old = publish(first, sets, "demo")
    assert publish(first, sets, "demo") == old  # idempotent
    new = publish(second, sets, "demo")
    assert resolve_set(sets, "demo") == new and resolve_set(sets, f"demo@{first.digest}") == old
    weights = {r["pair_id"]: r["weight"] for r in load_pairs(old).to_pylist()}
    assert weights["d:train:b#text"] == 1.1  # the old version is intact
    assert {r["pair_id"]: r["weight"] for r in load_pairs(new).to_pylist()}["d:train:b#text"] == 0.9
    # Curation back at the first content: no new version, and the name means the first one again.
    assert publish(first, sets, "demo") == old and resolve_set(sets, "demo") == old


@pytest.mark.parametrize(
    ("switches", "expected"),
    [
        ({"visual_pairs": False}, {"text": 2}),
        ({"text_pairs": False}, {"visual": 1}),
    ],
)
def test_ablation_switches(tmp_path, switches, expected):
    store, inputs = scene(tmp_path)
    pairs = load_pairs(Path(run(store, inputs, **switches).path)).to_pylist()
    kinds = {}
    for pair in pairs:
        kinds[pair["pair_type"]] = kinds.get(pair["pair_type"], 0) + 1
    assert kinds == expected


def test_loads_with_datasets_and_converts_to_trl_format(tmp_path):
    import datasets

    store, inputs = scene(tmp_path)
    folder = publish(run(store, inputs), tmp_path / "sets", "demo")
    loaded = datasets.load_dataset("parquet", data_dir=str(folder / "data"))
    assert list(loaded) == ["train"] and loaded["train"].num_rows == 3
    assert set(catalog.PAIRS.schema.names) <= set(loaded["train"].column_names)
    records = {r["pair_id"]: r for r in to_trl_records(folder)}
    visual = records["d:train:a#visual"]
    assert visual["prompt"] == [{"role": "user", "content": "Is there a lesion?"}]
    assert visual["chosen"] == visual["rejected"] == [{"role": "assistant", "content": "yes"}]
    chosen, rejected = np.asarray(visual["images"][0]), np.asarray(visual["rejected_images"][0])
    assert chosen.shape == rejected.shape == (48, 48, 3) and not np.array_equal(chosen, rejected)
    assert records["d:train:b#text"]["rejected"] == [{"role": "assistant", "content": "right lobe"}]
    buffer = io.BytesIO()
    visual["images"][0].save(buffer, "PNG")  # real, loadable PIL images
    assert buffer.tell() > 0


def test_a_data_set_without_a_test_split_has_nothing_to_leak():
    from tasks.assemble import LeakageIndex

    sample = {"image_sha256": "ab" * 32, "question": "Is there a lesion?", "image_phash": "0f" * 32}
    assert LeakageIndex([], near_duplicate_bits=8).match(sample) is None


def test_a_window_makes_pairs_of_its_samples_only(tmp_path):
    from tasks.config import SampleWindow
    from tasks.counters import NothingKept

    store, inputs = scene(tmp_path)
    samples = catalog.rows(inputs["ingest"], catalog.SAMPLES)
    made: dict[str, set[str]] = {}
    for start in range(4):
        window = SampleWindow(splits=["train"], start=start, count=1)
        (chosen,) = window.select(samples)
        try:
            manifest = run(store, inputs, window=window)
        except NothingKept as empty:  # no pair in the window: the run fails, nothing is stored
            assert "samples.out_of_scope.window 3" in str(empty) and "nothing is published" in str(empty)
            made[chosen] = set()
            continue
        pairs = load_pairs(Path(manifest.path)).to_pylist()
        dropped = catalog.rows(manifest, catalog.DROPPED)
        assert {p["sample_id"] for p in pairs} <= {chosen} and {d["sample_id"] for d in dropped} <= {chosen}
        assert manifest.counts["samples.out_of_scope.window"] == 3 and manifest.counts["samples.held_out.test"] == 1
        made[chosen] = {p["pair_id"] for p in pairs}
    assert made == {
        "d:train:a": {"d:train:a#text", "d:train:a#visual"},
        "d:train:b": {"d:train:b#text"},
        "d:train:leak": set(),  # dropped as a leak, inside its window
        "d:train:copy": set(),
    }


def test_the_sets_images_are_not_read_again_to_digest_the_set(tmp_path, monkeypatch):
    """Each image is named by the digest of the file it was copied or linked from: hashing the
    artifact reuses it, and the set's version is the same as when every image was read."""
    from tasks.store import keys
    from tasks.store.manifest import artifact_digest

    store, inputs = scene(tmp_path)
    read: list[Path] = []
    read_digest = keys._read_digest
    monkeypatch.setattr(keys, "_read_digest", lambda path: read.append(Path(path)) or read_digest(path))
    manifest = run(store, inputs)
    images = {path.name for path in (Path(manifest.path) / "images").iterdir()}
    assert len(images) == 3 and not images & {path.name for path in read}
    monkeypatch.setattr(keys, "_DIGESTS", {})  # every file read afresh
    assert artifact_digest(Path(manifest.path), ("CARD.md",)) == manifest.digest


def test_the_set_does_not_depend_on_how_many_samples_are_joined_at_a_time(tmp_path, monkeypatch):
    from tasks import assemble as stage

    store, inputs = scene(tmp_path)
    whole = run(store, inputs)
    monkeypatch.setattr(stage, "BATCH_SAMPLES", 1)
    one_by_one = run(ArtifactStore(tmp_path / "other"), inputs)
    assert one_by_one.digest == whole.digest and one_by_one.counts == whole.counts
