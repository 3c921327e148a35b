"""The grounding experiment's controlled data set: synthetic lesions on crops of real images.

Backgrounds are random crops of the real images the demo ships (chest and tibia X-ray,
liver/shoulder/head MR, CT, ultrasound, fundus, pathology; tasks.demo_data), rendered to
grayscale. A lesion is a soft-edged bright or dark blob of random size and contrast pasted
at a random position; its box goes into the JSONL, so the normal curation flow localizes,
noises and pairs it like any annotated data set.

Each image carries one question: "Is there a <finding>?" (closed; the finding named is drawn
from ``findings`` - every blob is one, so the name never changes the answer, only how
serious a wrong answer is: the judge weighs a missed or invented mass above a cyst), "Is the lesion in the left
half?" (closed) or "Where is the lesion?" (open, "Lesion in the upper left."). The answers'
marginal is the text prior: in the training split ``train_yes_rate`` of closed answers are
"yes" (and the same share of lesions lie in the left half), in the evaluation splits
``test_yes_rate``. A model answering from the text prior scores ``1 - train_yes_rate``-ish on
the flipped test split; only a model that looks at the blob beats it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from experiments.grounding.config import GroundingDataConfig
from tasks.demo_data import IMAGES, materialize
from tasks.imaging import dicom_to_png, load_array, save_array
from tasks.store import canonical_json, content_hash

PRESENCE = "Is there {article} {finding}?"
SIDE = "Is the lesion in the left half?"
WHERE = "Where is the lesion?"
QUESTION_KINDS = ("presence", "side", "where")


def is_presence(question: str) -> bool:
    """Whether a question asks if there is a finding (its lesion-removed twin's answer is "no")."""
    return question.startswith("Is there ")


def presence_question(finding: str) -> str:
    return PRESENCE.format(article="an" if finding[:1].lower() in "aeiou" else "a", finding=finding)


def build_grounding_data(out: Path, config: GroundingDataConfig) -> Path:
    """Write ``out/grounding.jsonl`` and ``out/images/``; returns the JSONL path.

    The folder is named by the caller; the same config gives the same bytes, so the ingest
    stage's source fingerprint only changes when the config does (files are rewritten only
    when the config's hash, kept in ``out/config.json``, differs).
    """
    out.mkdir(parents=True, exist_ok=True)
    path = out / "grounding.jsonl"
    stamp = out / "config.json"
    wanted = canonical_json(config)
    if path.is_file() and stamp.is_file() and stamp.read_text() == wanted:
        return path
    backgrounds = load_backgrounds(out / "backgrounds")
    rng = np.random.default_rng(config.seed)
    lines = []
    for split, count, yes_rate in (
        ("train", config.n_train, config.train_yes_rate),
        ("val", config.n_val, config.test_yes_rate),
        ("test", config.n_test, config.test_yes_rate),
    ):
        for index in range(count):
            record, pixels = make_sample(rng, backgrounds, config, split, index, yes_rate)
            save_array(pixels, out / record["image"])
            lines.append(json.dumps(record))
    path.write_text("\n".join(lines) + "\n")
    stamp.write_text(wanted)
    return path


def load_backgrounds(folder: Path) -> list[tuple[str, np.ndarray]]:
    """The demo's real images as 8-bit grayscale arrays (DICOM rendered as ingestion does)."""
    folder.mkdir(parents=True, exist_ok=True)
    found = []
    for name, (source, ref) in sorted(IMAGES.items()):
        raw = folder / name
        materialize(source, ref, raw)
        if raw.suffix == ".dcm":
            png = raw.with_suffix(".png")
            if not png.is_file():
                dicom_to_png(raw, png)
            raw = png
        pixels = load_array(raw).astype(np.float32)
        if pixels.ndim == 3:
            pixels = pixels.mean(axis=2)
        if pixels.dtype == np.uint16 or pixels.max() > 255:
            pixels = pixels / pixels.max() * 255
        found.append((Path(name).stem, pixels))
    return found


def make_sample(
    rng: np.random.Generator,
    backgrounds: list[tuple[str, np.ndarray]],
    config: GroundingDataConfig,
    split: str,
    index: int,
    yes_rate: float,
) -> tuple[dict[str, Any], np.ndarray]:
    kind = QUESTION_KINDS[int(rng.choice(len(QUESTION_KINDS), p=normalized(config.question_mix)))]
    yes = bool(rng.random() < yes_rate)
    has_lesion = yes if kind == "presence" else True
    # Side questions carry the prior in their answer; where-answers in the lesion's side.
    left = yes if kind != "presence" else bool(rng.random() < 0.5)
    source, background = backgrounds[int(rng.integers(len(backgrounds)))]
    pixels = crop(rng, background, config.image_size, config.background_range)
    boxes: list[list[int]] = []
    upper = bool(rng.random() < 0.5)
    if has_lesion:
        box = paste_lesion(rng, pixels, config, left, upper)
        boxes.append(box)
    if kind == "presence":
        finding = config.findings[int(rng.integers(len(config.findings)))]
        question, answer, answer_type = presence_question(finding), "yes" if has_lesion else "no", "closed"
    elif kind == "side":
        question, answer, answer_type = SIDE, "yes" if left else "no", "closed"
    else:
        question, answer, answer_type = (
            WHERE,
            f"Lesion in the {'upper' if upper else 'lower'} {'left' if left else 'right'}.",
            "open",
        )
    sample_id = f"{split}-{index:05d}"
    image = f"images/{sample_id}-{content_hash(sample_id, config.seed, length=6)}.png"
    record = {
        "id": sample_id,
        "image": image,
        "question": question,
        "answer": answer,
        "answer_type": answer_type,
        "task": "vqa",
        "split": split,
        "boxes": boxes,
        "box_labels": ["lesion"] * len(boxes),
        "background": source,
    }
    return record, np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def normalized(weights: list[float]) -> np.ndarray:
    values = np.asarray(weights, dtype=np.float64)
    return values / values.sum()


def crop(rng: np.random.Generator, image: np.ndarray, size: int, grey: tuple[float, float]) -> np.ndarray:
    """A random square crop (30-70% of the shorter side), resized to ``size`` and contrast-
    stretched (2nd-98th percentile) into the ``grey`` range, so every background spans the
    same greys and a lesion's contrast means the same on every image."""
    from PIL import Image

    height, width = image.shape
    side = int(min(height, width) * rng.uniform(0.3, 0.7))
    y0 = int(rng.integers(0, height - side + 1))
    x0 = int(rng.integers(0, width - side + 1))
    patch = Image.fromarray(image[y0 : y0 + side, x0 : x0 + side]).resize((size, size), Image.Resampling.BILINEAR)
    values = np.asarray(patch, dtype=np.float32)
    low, high = np.percentile(values, [2, 98])
    if high - low < 1:
        return np.full_like(values, sum(grey) / 2)
    return np.clip((values - low) / (high - low), 0, 1) * (grey[1] - grey[0]) + grey[0]


def paste_lesion(
    rng: np.random.Generator, pixels: np.ndarray, config: GroundingDataConfig, left: bool, upper: bool
) -> list[int]:
    """Add a Gaussian-edged disc in the requested quadrant, in place; returns its box."""
    size = pixels.shape[0]
    radius = float(rng.uniform(config.radius_min, config.radius_max)) * size
    contrast = float(rng.uniform(config.contrast_min, config.contrast_max)) * 255
    sign = 1.0 if rng.random() < config.bright_rate else -1.0
    margin = radius + 1
    half = size / 2
    cx = rng.uniform(margin, half - 1) if left else rng.uniform(half + 1, size - margin)
    cy = rng.uniform(margin, half - 1) if upper else rng.uniform(half + 1, size - margin)
    yy, xx = np.mgrid[0:size, 0:size]
    distance = np.hypot(xx - cx, yy - cy)
    profile = 1.0 / (1.0 + np.exp((distance - radius) / 0.8))  # a disc with a soft edge
    pixels += sign * contrast * profile
    np.clip(pixels, 0, 255, out=pixels)
    return [
        int(np.floor(cx - radius)),
        int(np.floor(cy - radius)),
        int(np.ceil(cx + radius)) + 1,
        int(np.ceil(cy + radius)) + 1,
    ]
