"""Regions are lesions: only boxes labelled with a disease or finding, never SLAKE's organs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks import catalog
from tasks.assemble import assemble
from tasks.config import (
    AssembleConfig,
    HallucinateConfig,
    IngestConfig,
    LocalizeConfig,
    NoiseConfig,
    ScoreConfig,
    SourceConfig,
)
from tasks.hallucinate import hallucinate
from tasks.imaging import load_array
from tasks.ingest import ingest
from tasks.localize import localize
from tasks.localize.regions import LesionLabels
from tasks.noise import noise
from tasks.score import score
from tasks.store import ArtifactStore
from tests.support.samples import ingest_manifest, sample_row, write_image


@pytest.mark.parametrize(
    ("label", "lesion"),
    [
        ("Brain Tumor", True),
        ("Brain Enhancing Tumor", True),
        ("Liver Cancer", True),
        ("Lung Nodules", True),  # plural
        ("Masses", True),
        ("Pleural Effusion", True),
        ("brain edema", True),
        ("lesion", True),  # what ingest labels a box given without a label
        ("Liver", False),
        ("Left Lung", False),
        ("Brain", False),
        ("Small Bowel", False),
        ("Massive", False),  # a term must be a whole word
        ("", False),
    ],
)
def test_lesion_labels_name_findings_not_organs(label, lesion):
    assert LesionLabels(LocalizeConfig().lesion_terms)(label) is lesion


def test_unlabeled_boxes_count_whatever_the_vocabulary():
    only_tumours = LesionLabels(["tumor"])
    assert only_tumours("lesion") and only_tumours("Brain Tumors") and not only_tumours("Lung Nodule")
    row = {"boxes": [[0, 0, 4, 4], [5, 5, 9, 9]], "box_labels": ["Liver", "lesion"]}
    assert only_tumours.boxes(row) == [[5, 5, 9, 9]]
    assert only_tumours.boxes({"boxes": [[0, 0, 4, 4]], "box_labels": []}) is None


def write_slake(root: Path) -> None:
    """Two SLAKE image folders: one annotated with organs only, one with a Brain Tumor box."""
    rng = np.random.default_rng(0)
    folders = {
        "xmlab1": [{"Liver": [4, 6, 30, 20]}, {"Kidney": [40, 30, 12, 14]}],
        "xmlab2": [{"Brain": [2, 2, 60, 44]}, {"Brain Tumor": [20, 16, 18, 12]}],
    }
    for name, detection in folders.items():
        (root / "imgs" / name).mkdir(parents=True)
        Image.fromarray(rng.integers(40, 200, (48, 64), dtype=np.uint8)).save(root / "imgs" / name / "source.jpg")
        organs = np.zeros((48, 64), dtype=np.uint8)
        organs[4:40, 4:60] = 128  # the organ colour of mask.png
        Image.fromarray(organs).save(root / "imgs" / name / "mask.png")
        (root / "imgs" / name / "detection.json").write_text(json.dumps(detection))
    records = [
        {
            "qid": i,
            "img_name": f"{name}/source.jpg",
            "question": "Is there a tumor?",
            "answer": answer,
            "q_lang": "en",
            "answer_type": "CLOSED",
            "modality": "MRI",
        }
        for i, (name, answer) in enumerate([("xmlab1", "No"), ("xmlab2", "Yes")])
    ]
    (root / "train.json").write_text(json.dumps(records))


def test_slake_organ_annotations_make_no_visual_pair_and_a_tumour_box_does(tmp_path):
    write_slake(tmp_path / "Slake1.0")
    store = ArtifactStore(tmp_path / "store")
    ingest_config = IngestConfig(sources=[SourceConfig(format="slake", root=tmp_path / "Slake1.0")])
    samples = ingest(store, ingest_config)
    regions = localize(store, LocalizeConfig(), samples)
    noised = noise(store, NoiseConfig(), samples, regions)
    texts = hallucinate(store, HallucinateConfig(), samples)
    scores = score(store, ScoreConfig(), samples, texts, regions)
    built = assemble(store, AssembleConfig(), samples, regions, noised, texts, scores)

    by_region = {r["sample_id"]: r for r in catalog.rows(regions, catalog.REGIONS)}
    organs, tumour = by_region["slake:train:0"], by_region["slake:train:1"]
    assert (organs["status"], organs["reason"]) == ("no_region", "no_lesion_label")
    assert tumour["status"] == "ok" and tumour["boxes"] == [[20.0, 16.0, 38.0, 28.0]]  # [x, y, w, h] -> corners
    box = np.zeros((48, 64), dtype=bool)
    box[16:28, 20:38] = True
    assert np.array_equal(load_array(regions.file(tumour["mask_path"])) > 0, box)  # the box, not the brain

    pairs = catalog.read_file(built.file("data/train-00000-of-00001.parquet"), catalog.PAIRS).to_pylist()
    assert [(p["sample_id"], p["pair_type"]) for p in pairs if p["pair_type"] == "visual"] == [
        ("slake:train:1", "visual")
    ]
    dropped = [r for r in catalog.rows(built, catalog.DROPPED) if r["pair_type"] == "visual"]
    assert [(r["sample_id"], r["reason"], r["detail"]) for r in dropped] == [
        ("slake:train:0", "region_no_region", "no_lesion_label")
    ]
    assert built.counts["visual.dropped.region_no_region"] == 1
    # The noised image differs from the original inside the tumour box only.
    visual = next(p for p in pairs if p["pair_type"] == "visual")
    changed = load_array(Path(built.path) / visual["rejected_image"]) != load_array(
        Path(built.path) / visual["chosen_image"]
    )
    assert changed[box].mean() > 0.8 and not changed[~box].any()


def test_unlabeled_jsonl_boxes_are_the_users_lesions(tmp_path):
    Image.fromarray(np.full((40, 40), 90, dtype=np.uint8)).save(tmp_path / "a.png")
    lines = [
        {"id": "mine", "image": "a.png", "question": "Lesion?", "answer": "yes", "boxes": [[4, 4, 20, 20]]},
        {
            "id": "organ",
            "image": "a.png",
            "question": "Liver?",
            "answer": "yes",
            "boxes": [[4, 4, 20, 20], [22, 22, 38, 38]],
            "box_labels": ["Liver", "Nodule"],
        },
    ]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    store = ArtifactStore(tmp_path / "store")
    config = IngestConfig(sources=[SourceConfig(format="jsonl", root=tmp_path / "data.jsonl", name="own")])
    samples = ingest(store, config)
    rows = {r["sample_id"]: r for r in catalog.rows(localize(store, LocalizeConfig(), samples), catalog.REGIONS)}
    assert rows["own:train:mine"]["status"] == "ok" and rows["own:train:mine"]["boxes"] == [[4.0, 4.0, 20.0, 20.0]]
    assert rows["own:train:organ"]["boxes"] == [[22.0, 22.0, 38.0, 38.0]]  # the labelled organ box is left out


def test_sam_is_never_prompted_with_an_organ_box(tmp_path):
    from tests.support.sam import tiny_sam_checkpoint

    image = write_image(tmp_path / "a.png", np.random.default_rng(1).integers(0, 256, (48, 64), dtype=np.uint8))
    rows = [
        sample_row("organ", image, boxes=[[4, 4, 30, 30]], box_labels=["Liver"]),
        sample_row("tumour", image, boxes=[[4, 4, 30, 30], [34, 10, 60, 40]], box_labels=["Liver", "Liver Tumor"]),
    ]
    store = ArtifactStore(tmp_path / "store")
    config = LocalizeConfig(source="sam", sam=tiny_sam_checkpoint(tmp_path / "tiny.pth"), min_area_fraction=0.0)
    manifest = localize(store, config, ingest_manifest(store, rows))
    regions = {r["sample_id"]: r for r in catalog.rows(manifest, catalog.REGIONS)}
    assert (regions["organ"]["status"], regions["organ"]["reason"]) == ("no_region", "no_lesion_label")
    assert regions["tumour"]["boxes"] == [[34.0, 10.0, 60.0, 40.0]]
