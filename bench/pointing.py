"""Does the attention localizer point at the lesion? Pointing accuracy and IoU against a random baseline.

Data: the grounding experiment's third design (experiments/grounding/data.py: on crops of real
images, 32 px, a soft disc - the lesion, its box known - in one half and a same-area 3:1 ellipse in
the other; questions "Is the lesion in the left half?" and "Which quadrant is the lesion in?"),
test split originals and twins whose lesion box covers at most ``--max-area`` of the image. Model:
the experiment's SFT'd SmolLM2 LLaVA (its first 3 layers; SigLIP tower, the image at 16 px in 4 px
patches, 16 image tokens), trained as the experiment trains it (its tower pretrained, then the SFT on
``--sft`` images of its own), seed 0.

First, whether the model answers from the image: its greedy accuracy per question kind on the
test split, beside the text prior (the training split's majority answer per kind; the test split's
answers are flipped against it, so only a model that reads the image beats it).

Then, per sample, with the ground-truth answer teacher-forced (as the localize stage does), for each
method of models/attention.py (attention rollout; gradient-weighted relevance), each with and without
``through_tower`` (the image tokens' relevance carried on to the patches by the tower's rollout):
- pointing: the map's peak (localize's SAM prompt: the best token cell's centre on the smoothed map) lies
  inside the lesion box;
- IoU: the region the ``heatmap`` rules threshold from the map (localize's defaults) vs the box.
Baselines in the same run: a random map on the same token grid through the same smoothing and
threshold, and the analytic chance of a uniform random point (mean box area). Ceiling: the box's
own coverage of each token cell as the map (the best any map on this grid can do through the same
smoothing). Goal: pointing accuracy >= 2x the random point.

    PYTHONPATH=. .venv/bin/python bench/pointing.py [--sft 5000] [--test 160] [--max-area 0.15]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from experiments.grounding.arms import sft_ingest
from experiments.grounding.config import SMOLLM2, GroundingDataConfig, smollm2_backbone
from experiments.grounding.data import build_grounding_data
from experiments.grounding.pretrain import seed_sft
from models import attention, vlm
from tasks import smollm2
from tasks.config import HeatmapConfig
from tasks.ingest import ingest
from tasks.localize.maps import map_peaks, smooth, threshold
from tasks.localize.regions import boxes_mask
from tasks.sft import model_dir, sft
from tasks.store import ArtifactStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sft", type=int, default=5000, help="The SFT's own images (the experiment's n_sft)")
    parser.add_argument("--test", type=int, default=160)
    parser.add_argument("--max-area", type=float, default=0.15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None, help="Keep data and the SFT model here (reused)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-pointing-"))
    started = time.perf_counter()
    smollm2.ensure(SMOLLM2)
    config = GroundingDataConfig(n_val=1, n_test=args.test, n_sft=args.sft)
    data = build_grounding_data(work / "data", config)
    store = ArtifactStore(work / "store")
    settings, _ = seed_sft(str(store.root), smollm2_backbone(), config, seed=0)
    model = model_dir(sft(store, settings, ingest(store, sft_ingest(data))))
    prepared = time.perf_counter() - started

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    loaded = attention.load(model)
    print(f"machine: {platform.machine()} {platform.processor() or ''}; model: {model}")
    print(f"prepare (data, SmolLM2 conversion, SFT; reused under --work): {prepared:.0f} s")
    answers_from_the_image(loaded, rows, data.parent, args.batch)

    tests = [r for r in rows if r["split"] == "test" and r["boxes"]]
    side = attention.view_side(loaded.model.config)
    heatmap = HeatmapConfig()
    scores: dict[str, list[tuple[bool, float]]] = {}
    areas: list[float] = []
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    variants = [(method, tower) for method in attention.METHODS for tower in (False, True)]
    for method, tower in variants:
        for start in range(0, len(tests), args.batch):
            batch = tests[start : start + args.batch]
            images = [str(data.parent / r["image"]) for r in batch]
            questions, answers = [r["question"] for r in batch], [r["answer"] for r in batch]
            maps = attention.relevance_maps(loaded, questions, answers, images, method, through_tower=tower)
            for row, relevance in zip(batch, maps):
                box = boxes_mask(row["boxes"], *relevance.shape)
                if box.mean() > args.max_area:
                    continue
                scores.setdefault(f"{method}{' + tower' if tower else ''}", []).append(score(relevance, box, heatmap))
                if (method, tower) == variants[0]:
                    areas.append(float(box.mean()))
                    noise = rng.random((side, side)).astype(np.float32)
                    scores.setdefault("random", []).append(score(noise, box, heatmap))
                    scores.setdefault("ceiling", []).append(score(coverage(box, side), box, heatmap))
    seconds = time.perf_counter() - started
    chance = float(np.mean(areas))
    names = {
        "rollout": "attention rollout (Abnar & Zuidema 2020)",
        "rollout + tower": "attention rollout, through the vision tower (through_tower)",
        "gradient": "gradient-weighted relevance (Chefer et al. 2021)",
        "gradient + tower": "gradient-weighted relevance, through the vision tower (through_tower)",
        "random": f"random map, same {side} x {side} grid and threshold",
        "ceiling": f"ceiling: the box's coverage of each of the {side} x {side} cells as the map",
    }
    print(f"{len(areas)} test lesions <= {args.max_area:.0%} of the image; maps: {seconds:.1f} s")
    print("| method | pointing accuracy | mean IoU | x random point |\n|---|---|---|---|")
    for key, name in names.items():
        hits, overlaps = zip(*scores[key])
        print(f"| {name} | {np.mean(hits):.3f} | {np.mean(overlaps):.3f} | {np.mean(hits) / chance:.2f} |")
    print(f"| uniform random point (mean box area) | {chance:.3f} | - | 1.00 |")


def answers_from_the_image(loaded: vlm.VLM, rows: list[dict], root: Path, batch: int) -> None:
    """Greedy accuracy per question kind on the test split beside the training split's majority answer."""
    tests = [r for r in rows if r["split"] == "test"]
    settings = vlm.GenerationSettings(max_new_tokens=16, batch_size=batch)
    said = vlm.generate(loaded, [r["question"] for r in tests], [str(root / r["image"]) for r in tests], settings)
    print("| question kind | test questions | model (greedy) | text prior (train's majority answer) |")
    print("|---|---|---|---|")
    for kind in sorted({question_kind(r) for r in tests}):
        mine = [(r, a[0]) for r, a in zip(tests, said) if question_kind(r) == kind]
        train = Counter(same(r["answer"]) for r in rows if r["split"] == "train" and question_kind(r) == kind)
        prior = train.most_common(1)[0][0]
        model_right = np.mean([same(a) == same(r["answer"]) for r, a in mine])
        prior_right = np.mean([prior == same(r["answer"]) for r, _ in mine])
        print(f"| {kind} | {len(mine)} | {model_right:.3f} | {prior_right:.3f} ({prior!r}) |")


def question_kind(row: dict) -> str:
    question = row["question"]
    return "side" if "left half" in question else "quadrant"


def same(answer: str) -> str:
    return answer.strip().lower().rstrip(".")


def coverage(box: np.ndarray, side: int) -> np.ndarray:
    """The share of each of the side x side cells that the box covers."""
    height, width = box.shape
    rows = np.array_split(np.arange(height), side)
    cols = np.array_split(np.arange(width), side)
    return np.array([[box[np.ix_(r, c)].mean() for c in cols] for r in rows], dtype=np.float32)


def score(relevance: np.ndarray, box: np.ndarray, heatmap: HeatmapConfig) -> tuple[bool, float]:
    """(peak inside the box, IoU of the thresholded region with the box) for one map."""
    height, width = box.shape
    saliency = smooth(relevance, height, width, heatmap)
    if saliency is None:
        return False, 0.0
    y, x = map_peaks(saliency, relevance.shape, 1)[0]
    region = threshold(saliency, heatmap)
    union = (region | box).sum()
    return bool(box[y, x]), float((region & box).sum() / union) if union else 0.0


if __name__ == "__main__":
    main()
