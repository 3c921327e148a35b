"""Does the attention localizer point at the lesion? Pointing accuracy and IoU against a random baseline.

Data: the grounding experiment's synthetic lesions (experiments/grounding/data.py: soft blobs on
crops of real images, boxes known), test split, samples whose lesion box covers at most
``--max-area`` of the image. Model: the experiment's SFT'd SmolLM2 LLaVA (its first 3 layers,
16 image tokens, trained 8 epochs on the training split - the model that answers from the image).

Measured per sample, with the ground-truth answer teacher-forced (as the localize stage does):
- pointing: the attention-rollout map's peak (models/attention.py) lies inside the lesion box;
- IoU: the region the ``heatmap`` rules threshold from the map (localize's defaults) vs the box.
Baseline in the same run: a random map on the same token grid through the same smoothing and
threshold (pointing and IoU), and the analytic chance of a uniform random point (mean box area).
Goal: pointing accuracy >= 2x the random baseline.

    PYTHONPATH=. .venv/bin/python bench/pointing.py [--train 600] [--test 200] [--max-area 0.15]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.grounding.config import SMOLLM2, GroundingDataConfig, smollm2_backbone
from experiments.grounding.data import build_grounding_data
from models import attention, smollm2
from tasks.config import HeatmapConfig, IngestConfig, SourceConfig
from tasks.ingest import ingest
from tasks.localize.regions import boxes_mask, smooth, threshold
from tasks.sft import model_dir, sft
from tasks.store import ArtifactStore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--max-area", type=float, default=0.15)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--work", type=Path, default=None, help="Keep data and the SFT model here (reused)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-pointing-"))
    started = time.perf_counter()
    smollm2.ensure(SMOLLM2)
    data = build_grounding_data(work / "data", GroundingDataConfig(n_train=args.train, n_val=1, n_test=args.test))
    store = ArtifactStore(work / "store")
    samples = ingest(store, IngestConfig(sources=[SourceConfig(format="jsonl", root=data)]))
    model = model_dir(sft(store, smollm2_backbone().sft, samples))
    prepared = time.perf_counter() - started

    rows = [json.loads(line) for line in data.read_text().splitlines()]
    tests = [r for r in rows if r["split"] == "test" and r["boxes"]]
    loaded = attention.load(model)
    heatmap = HeatmapConfig()
    rng = np.random.default_rng(0)
    hits, iou, random_hits, random_iou, areas = [], [], [], [], []
    started = time.perf_counter()
    for start in range(0, len(tests), args.batch):
        batch = tests[start : start + args.batch]
        images = [str(data.parent / r["image"]) for r in batch]
        maps = attention.relevance_maps(loaded, [r["question"] for r in batch], [r["answer"] for r in batch], images)
        for row, relevance in zip(batch, maps):
            height, width = relevance.shape
            box = boxes_mask(row["boxes"], height, width)
            if box.mean() > args.max_area:
                continue
            areas.append(float(box.mean()))
            noise = rng.random((4, 4)).astype(np.float32)  # the model's 16-token grid
            for source, (hit_list, iou_list) in ((relevance, (hits, iou)), (noise, (random_hits, random_iou))):
                hit, overlap = score(source, box, heatmap)
                hit_list.append(hit)
                iou_list.append(overlap)
    seconds = time.perf_counter() - started
    n = len(hits)
    table = [
        ("attention rollout (SFT'd SmolLM2 LLaVA)", np.mean(hits), np.mean(iou)),
        ("random map, same grid and threshold", np.mean(random_hits), np.mean(random_iou)),
        ("uniform random point (mean box area)", np.mean(areas), float("nan")),
    ]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {n} test lesions <= {args.max_area:.0%} area")
    print(f"prepare (data, SmolLM2 conversion, SFT; reused under --work): {prepared:.0f} s; maps: {seconds:.1f} s")
    print("| method | pointing accuracy | mean IoU | x random point |\n|---|---|---|---|")
    for name, pointing, overlap in table:
        print(f"| {name} | {pointing:.3f} | {overlap:.3f} | {pointing / np.mean(areas):.2f} |")


def score(relevance: np.ndarray, box: np.ndarray, heatmap: HeatmapConfig) -> tuple[bool, float]:
    """(peak inside the box, IoU of the thresholded region with the box) for one map."""
    height, width = box.shape
    saliency = smooth(relevance, height, width, heatmap)
    if saliency is None:
        return False, 0.0
    y, x = np.unravel_index(int(np.argmax(saliency)), saliency.shape)
    region = threshold(saliency, heatmap)
    union = (region | box).sum()
    return bool(box[y, x]), float((region & box).sum() / union) if union else 0.0


if __name__ == "__main__":
    main()
