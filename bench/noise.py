"""Lesion noising throughput on 512x512 PNGs, against decoding + encoding the same PNGs.

Baseline: ``load_array`` + ``save_array`` of every image - the codec work the noise stage
cannot avoid. Measured: the noising itself (feathered weight + forward diffusion, local
and global), then the whole noise stage through the store. Goal: noising adds under 30%
to the codec cost. Also: SAM vit_b image-encoder seconds per image (random weights; the
cost does not depend on them).

    .venv/bin/python bench/noise.py [--images 24] [--sam-images 2]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tasks import catalog
from tasks.config import IngestConfig, LocalizeConfig, NoiseConfig
from tasks.config.noise import alpha_bar
from tasks.imaging import load_array, save_array
from tasks.localize import localize
from tasks.noise import noise
from tasks.noise.diffusion import feather, noise_array
from tasks.store import ArtifactStore, Manifest

SIDE = 512


def synthetic(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Smooth anatomy-like shading plus grain: compresses like a real scan, not like noise."""
    yy, xx = np.mgrid[0:SIDE, 0:SIDE] / SIDE
    base = 0.5 + 0.3 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy) + 0.05 * rng.standard_normal((SIDE, SIDE))
    base = np.clip(base, 0, 1)
    if kind == "gray16":
        return np.round(base * 4095).astype(np.uint16)  # 12-bit data in a 16-bit PNG, as CT/CR exports are
    gray = np.round(base * 255).astype(np.uint8)
    return np.stack([gray, np.roll(gray, 7, axis=1), gray // 2 + 60], axis=2) if kind == "rgb" else gray


def lesion_box(rng: np.random.Generator) -> list[float]:
    """About 10% of the image, anywhere."""
    w, h = rng.integers(120, 200, size=2)
    x0, y0 = rng.integers(0, SIDE - w), rng.integers(0, SIDE - h)
    return [float(x0), float(y0), float(x0 + w), float(y0 + h)]


def bench_ingest(store: ArtifactStore, paths: list[Path], boxes: list[list[float]]) -> Manifest:
    """An ingest artifact for the images, so the noise stage runs exactly as in a flow."""
    rows = [
        {
            "sample_id": f"b{i}",
            "dataset": "bench",
            "split": "train",
            "task": "vqa",
            "image_path": str(p),
            "image_sha256": f"{i:064x}",
            "image_phash": f"{i:064x}",
            "width": SIDE,
            "height": SIDE,
            "modality": None,
            "question": "Lesion?",
            "answer": "yes",
            "answer_type": "closed",
            "boxes": [b],
            "box_labels": ["lesion"],
            "mask_path": None,
            "other_images": [],
            "language": "en",
            "source_ref": f"bench#{i}",
        }
        for i, (p, b) in enumerate(zip(paths, boxes))
    ]

    def build(out: Path) -> dict[str, float]:
        catalog.write_file(out / "samples.parquet", catalog.SAMPLES, rows)
        return {"samples": float(len(rows))}

    return store.run("ingest", "bench", IngestConfig(), {}, build)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--sam-images", type=int, default=2)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    kinds = ["gray8", "rgb", "gray16"]
    config = NoiseConfig()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths, boxes = [], []
        for i in range(args.images):
            paths.append(save_array(synthetic(kinds[i % 3], rng), work / "in" / f"{i:03d}.png"))
            boxes.append(lesion_box(rng))

        codec_s = timed(lambda: [save_array(load_array(p), work / "codec" / p.name) for p in paths])
        arrays = [load_array(p) for p in paths]
        masks = []
        for box in boxes:
            mask = np.zeros((SIDE, SIDE), dtype=bool)
            x0, y0, x1, y1 = map(int, box)
            mask[y0:y1, x0:x1] = True
            masks.append(mask)
        local_s = timed(
            lambda: [
                noise_array(a, feather(m, config.feather_px), config, i) for i, (a, m) in enumerate(zip(arrays, masks))
            ]
        )
        global_s = timed(lambda: [noise_array(a, None, config, i) for i, a in enumerate(arrays)])
        old = NoiseConfig(schedule="linear", space="minmax")  # the default before issue 16
        old_local_s = timed(
            lambda: [noise_array(a, feather(m, old.feather_px), old, i) for i, (a, m) in enumerate(zip(arrays, masks))]
        )

        stage_s = {}
        for workers in (1, 2):
            # A store each: workers is operational (not in the key), so a shared store would serve the second
            # run from the first one's cache.
            store = ArtifactStore(work / f"store-{workers}")
            ingest = bench_ingest(store, paths, boxes)
            regions = localize(store, LocalizeConfig(), ingest)
            stage_s[workers] = timed(
                lambda: noise(store, config.model_copy(update={"workers": workers}), ingest, regions)
            )

        sam_s = None
        if args.sam_images:
            from segment_anything import sam_model_registry

            from models.sam import Prompt, SamSegmenter

            segmenter = SamSegmenter(sam_model_registry["vit_b"]().eval())
            picks = arrays[: args.sam_images]
            prompts = [[Prompt(boxes=np.array([b]))] for b in boxes[: args.sam_images]]
            segmenter.segment(picks[:1], prompts[:1])  # warm-up: first-call allocations
            sam_s = timed(lambda: [segmenter.segment([a], [p]) for a, p in zip(picks, prompts)]) / len(picks)

    n = args.images
    print(
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, torch threads {torch.get_num_threads()}, "
        f"python {platform.python_version()}"
    )
    print(
        f"{n} images {SIDE}x{SIDE} (gray8 / rgb / gray16 in turn), lesion ~10% of the image, {config.schedule} "
        f"schedule k={config.k} (sqrt(abar) = {alpha_bar(config) ** 0.5:.4f}), {config.space} space, "
        f"{config.channels} channels"
    )
    print(f"| {'what':<44} | {'seconds':>8} | {'images/s':>9} | {'/ codec':>7} |")
    print(f"|{'-' * 46}|{'-' * 9}:|{'-' * 10}:|{'-' * 8}:|")
    rows = [
        ("PNG decode + encode (baseline)", codec_s),
        ("noising, local (feather + diffusion)", local_s),
        ("noising, global", global_s),
        ("noising, local, old default (linear, minmax)", old_local_s),
        ("noise stage, 1 worker (decode+noise+encode)", stage_s[1]),
        ("noise stage, 2 workers", stage_s[2]),
    ]
    for name, seconds in rows:
        print(f"| {name:<44} | {seconds:>8.3f} | {n / seconds:>9.1f} | {seconds / codec_s:>6.2f}x |")
    print(
        f"local noising adds {100 * local_s / codec_s:.0f}% to the codec cost (goal < 30%); global adds "
        f"{100 * global_s / codec_s:.0f}%"
    )
    if sam_s is not None:
        print(
            f"SAM vit_b encode + decode, random weights, 1024x1024 input: {sam_s:.2f} s/image ({args.sam_images} "
            "images)"
        )


if __name__ == "__main__":
    main()
