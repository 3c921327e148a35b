"""Box-less data sets get visual pairs: a VQA-RAD-layout and an R2Gen (IU-Xray) layout source through
`mmedpo curate` with nothing configured beyond the model: the default chain falls through from
annotation (none there) to the model's attention."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from flows.cli import main
from tasks.store import Manifest

ORGANS = ("HEAD", "CHEST", "ABD")


def write_vqa_rad(root: Path, n: int, rng: np.random.Generator) -> None:
    folder = root / "VQA_RAD Image Folder"
    folder.mkdir(parents=True)
    records = []
    for i in range(n):
        # Non-square, grey and colour: every shape a real folder holds.
        size = (64, 48) if i % 2 else (40, 56)
        pixels = rng.integers(0, 256, (*size[::-1], 3) if i % 3 == 0 else size[::-1], dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"synpic{i}.jpg")
        records.append(
            {
                "qid": str(i),
                "image_name": f"synpic{i}.jpg",
                "image_organ": ORGANS[i % 3],
                "question": "Is there a mass?" if i % 2 else "How many lesions are seen?",
                "answer": "Yes" if i % 2 else 2,
                "answer_type": "CLOSED" if i % 2 else "OPEN",
                "question_type": "PRES",
                "phrase_type": "freeform",
            }
        )
    (root / "VQA_RAD Dataset Public.json").write_text(json.dumps(records))


def write_iu_xray(root: Path, n: int, rng: np.random.Generator) -> None:
    studies = []
    for i in range(n):
        study = root / "images" / f"CXR{i}"
        study.mkdir(parents=True)
        for view in range(2):
            Image.fromarray(rng.integers(0, 256, (60, 50), dtype=np.uint8)).save(study / f"{view}.png")
        report = "Small left pleural effusion." if i % 2 else "The heart is normal in size. No pneumothorax."
        studies.append({"id": f"CXR{i}", "report": report, "image_path": [f"CXR{i}/0.png", f"CXR{i}/1.png"]})
    (root / "annotation.json").write_text(json.dumps({"train": studies, "val": [], "test": []}))


@pytest.mark.slow
def test_boxless_sources_get_visual_pairs_with_only_a_model_named(tmp_path, tiny_llava, prefect_harness, capsys):
    rng = np.random.default_rng(0)
    write_vqa_rad(tmp_path / "VQA_RAD", 8, rng)
    write_iu_xray(tmp_path / "iu_xray", 6, rng)
    run = {
        "name": "boxless",
        "store": str(tmp_path / "store"),
        "sets": str(tmp_path / "sets"),
        "model": str(tiny_llava),
        "ingest": {
            "sources": [
                {"format": "vqa-rad", "root": str(tmp_path / "VQA_RAD")},
                {"format": "r2gen", "root": str(tmp_path / "iu_xray")},
            ]
        },
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    assert main(["curate", "--config", str(path)]) == 0
    out = capsys.readouterr().out

    store = tmp_path / "store"
    localize = latest_manifest(store, "localize")
    counts = localize.counts
    for dataset, kept in (("vqa-rad", 8), ("iu-xray", 6)):
        assert counts[f"samples[{dataset}].seen"] == kept
        assert counts.get(f"regions[{dataset}].ok.by_attention", 0) >= 0.9 * kept, counts
    assemble = Path(latest_manifest(store, "assemble").path)
    pairs = pq.read_table(assemble / "data/train-00000-of-00001.parquet").to_pylist()
    visual = [p for p in pairs if p["pair_type"] == "visual"]
    assert len(visual) >= 0.9 * 14
    # The noised image differs from the clean one inside the region, so the pair teaches something.
    pair = visual[0]
    chosen, rejected = (np.asarray(Image.open(assemble / pair[f"{side}_image"])) for side in ("chosen", "rejected"))
    assert chosen.shape == rejected.shape and not np.array_equal(chosen, rejected)
    assert "ALERT localize" not in out


@pytest.mark.slow
def test_a_source_without_regions_is_named_in_the_alerts(tmp_path, prefect_harness, capsys):
    """No model named: the VQA-RAD source has no region anywhere, and the run says so by name."""
    write_vqa_rad(tmp_path / "VQA_RAD", 4, np.random.default_rng(1))
    run = {
        "name": "nomodel",
        "store": str(tmp_path / "store"),
        "sets": str(tmp_path / "sets"),
        "ingest": {"sources": [{"format": "vqa-rad", "root": str(tmp_path / "VQA_RAD")}]},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    assert main(["curate", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ALERT localize: data set 'vqa-rad' has a region (a visual pair) for 0% of its 4 samples" in out
    assert "no_region.no_annotation 4" in out


def latest_manifest(store: Path, stage: str) -> Manifest:
    paths = sorted((store / stage).glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    return Manifest.model_validate_json(paths[-1].read_text())
