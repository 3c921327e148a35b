"""The grounding experiment's controlled data set: a lesion and a distractor on crops of real images.

Backgrounds are random crops of the real images the demo ships (tasks.demo_data), grey, stretched
to span exactly ``background_range``. Every image has a lesion - a soft-edged disc - in one half
and a distractor of the same area and contrast but another shape (a 3:1 ellipse) in the other
half; both stay inside the background's grey range, so neither an intensity tail nor the mere
presence of a blob tells where the lesion is: only its shape does. Each image is asked "Is the
lesion in the left half?" (closed) and "Which quadrant is the lesion in?" (open, "upper left").
``train_left_rate`` of training lesions lie in the left half (the text prior), ``test_left_rate``
of val and test lesions.

Val and test images carry two twins, drawn from the same background and parameters (exact, where
inpainting would leave its own trace): the **relocation** twin (lesion and distractor moved to their
mirror positions on the same background: the closed answer flips) and the **distractor-removal**
twin (the distractor left out: the answer stays). Moving the lesion alone cannot work at these
sizes: a disc of radius 0.2 of the side and a same-area 3:1 ellipse do not both fit in one half, so
the twin mirrors both; a model that answers "opposite the ellipse" passes it, and the
distractor-removal twin is what catches that model. ``grounding.jsonl`` boxes the lesion (the annotation
localizer's region); ``sham.jsonl`` holds the training records again with a box of the same size
centred on the distractor, for the sham arm. ``sft.jsonl`` holds the SFT's own images (``n_sft``,
lesions left at ``sft_left_rate``: no side prior by default; both questions, no twins): the SFT starts
every arm, and a tiny tower learns the lesion's shape only from thousands of images, far more than
the preference pairs need.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from experiments.grounding.config import GroundingDataConfig
from tasks.demo_data import IMAGES, materialize
from tasks.imaging import dicom_to_png, load_array, save_array
from tasks.store import canonical_json, content_hash
from tasks.store.files import write_text_atomic

SIDE = "Is the lesion in the left half?"
QUADRANT = "Which quadrant is the lesion in?"
SHAM = "sham.jsonl"
SFT = "sft.jsonl"
# Twin kinds, as the suffix of their ids: the relocation twin's closed answer flips, the other's stays.
MIRROR, CLEAN = "mirror", "clean"
EDGE_PX = 0.8  # width of the soft edge of lesion and distractor


@dataclass(frozen=True)
class Scene:
    """What one image is made of: its background and the lesion's and distractor's geometry."""

    background: np.ndarray
    radius: float
    lesion: tuple[float, float]
    distractor: tuple[float, float]
    angle: float
    lesion_delta: float
    distractor_delta: float
    grey: tuple[int, int]
    aspect: float

    def render(self, mirror: bool = False, distractor: bool = True) -> np.ndarray:
        """The image as 8-bit greys; ``mirror``: lesion and distractor at their mirror positions across the
        vertical midline, on the same background; ``distractor``: False leaves it out."""
        size = self.background.shape[0]
        lesion, other, angle = (self.lesion, self.distractor, self.angle)
        if mirror:
            lesion, other, angle = mirrored(size, lesion), mirrored(size, other), np.pi - angle
        pixels = self.background + self.lesion_delta * disc(size, lesion, self.radius)
        if distractor:
            pixels = pixels + self.distractor_delta * ellipse(size, other, self.radius, self.aspect, angle)
        return np.clip(np.round(pixels), *self.grey).astype(np.uint8)


def mirrored(size: int, point: tuple[float, float]) -> tuple[float, float]:
    return (size - point[0], point[1])


def build_grounding_data(out: Path, config: GroundingDataConfig) -> Path:
    """Write ``out/grounding.jsonl``, ``out/sham.jsonl``, ``out/sft.jsonl`` and ``out/images/``; returns
    grounding.jsonl's path.

    The same config gives the same bytes; files are rewritten only when the config's hash, kept in
    ``out/config.json``, differs.
    """
    out.mkdir(parents=True, exist_ok=True)
    path, sham, sft, stamp = out / "grounding.jsonl", out / SHAM, out / SFT, out / "config.json"
    wanted = canonical_json(config)
    if all(f.is_file() for f in (path, sham, sft, stamp)) and stamp.read_text() == wanted:
        return path
    backgrounds = load_backgrounds(out / "backgrounds")
    rng = np.random.default_rng(config.seed)
    lines, sham_lines, sft_lines = [], [], []
    # The SFT's images come last, so the preference and evaluation images do not depend on n_sft.
    for name, split, count, left_rate in (
        ("train", "train", config.n_train, config.train_left_rate),
        ("val", "val", config.n_val, config.test_left_rate),
        ("test", "test", config.n_test, config.test_left_rate),
        ("sft", "train", config.n_sft, config.sft_left_rate),
    ):
        for index in range(count):
            left, upper = bool(rng.random() < left_rate), bool(rng.random() < 0.5)
            scene = make_scene(rng, backgrounds, config, left, upper)
            records = write_image(out, scene, f"{name}-{index:05d}", split, config.seed)
            if name == "sft":
                sft_lines += records
                continue
            lines += records
            if split == "train":
                sham_lines += [{**r, "boxes": [same_size_box(scene, scene.distractor)]} for r in records]
    for file, rows in ((path, lines), (sham, sham_lines), (sft, sft_lines)):
        write_text_atomic(file, "".join(json.dumps(r) + "\n" for r in rows))
    write_text_atomic(stamp, wanted)
    return path


def write_image(out: Path, scene: Scene, sample_id: str, split: str, seed: int) -> list[dict[str, Any]]:
    """Save the image (and its twins outside the training split); returns its JSONL records."""
    size = scene.background.shape[0]
    left, upper = scene.lesion[0] < size / 2, scene.lesion[1] < size / 2

    def image(suffix: str, pixels: np.ndarray) -> str:
        name = f"images/{sample_id}{suffix}-{content_hash(sample_id, seed, length=6)}.png"
        save_array(pixels, out / name)
        return name

    box = same_size_box(scene, scene.lesion)
    mirror = mirrored(size, scene.lesion)
    original = image("", scene.render())
    records = [
        record(f"{sample_id}", original, SIDE, yes_no(left), "closed", split, box),
        record(f"{sample_id}-q", original, QUADRANT, quadrant(left, upper), "open", split, box),
    ]
    if split != "train":
        moved = image(f"-{MIRROR}", scene.render(mirror=True))
        clean = image(f"-{CLEAN}", scene.render(distractor=False))
        records += [
            record(
                f"{sample_id}-{MIRROR}", moved, SIDE, yes_no(not left), "closed", split, same_size_box(scene, mirror)
            ),
            record(f"{sample_id}-{CLEAN}", clean, SIDE, yes_no(left), "closed", split, box),
        ]
    return records


def record(
    sample_id: str, image: str, question: str, answer: str, answer_type: str, split: str, box: list[int]
) -> dict[str, Any]:
    return {
        "id": sample_id,
        "image": image,
        "question": question,
        "answer": answer,
        "answer_type": answer_type,
        "task": "vqa",
        "split": split,
        "boxes": [box],
    }


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def quadrant(left: bool, upper: bool) -> str:
    return f"{'upper' if upper else 'lower'} {'left' if left else 'right'}"


def same_size_box(scene: Scene, centre: tuple[float, float]) -> list[int]:
    """The lesion's box (a square of side 2 radius, whole pixels) centred on ``centre``."""
    cx, cy = centre
    r = scene.radius
    return [int(np.floor(cx - r)), int(np.floor(cy - r)), int(np.ceil(cx + r)), int(np.ceil(cy + r))]


def make_scene(
    rng: np.random.Generator,
    backgrounds: list[tuple[str, np.ndarray]],
    config: GroundingDataConfig,
    left: bool,
    upper: bool,
) -> Scene:
    """A lesion centred in the requested quadrant, wholly inside its half; a distractor of the same area
    at a random angle, wholly inside the other half."""
    size = config.image_size
    half = size / 2
    grey = config.background_range
    background = crop(rng, backgrounds[int(rng.integers(len(backgrounds)))][1], size, grey)
    radius = float(rng.uniform(config.radius_min, config.radius_max)) * size
    cx = rng.uniform(radius + 1, half - radius - 1)
    cx = cx if left else size - cx
    cy = rng.uniform(radius + 1, half) if upper else rng.uniform(half, size - radius - 1)
    span = grey[1] - grey[0]
    deltas = [float(rng.choice([-1, 1]) * rng.uniform(config.contrast_min, config.contrast_max) * span) for _ in "ld"]
    major, minor = radius * np.sqrt(config.distractor_aspect), radius / np.sqrt(config.distractor_aspect)
    for _ in range(1000):
        angle = float(rng.uniform(0, np.pi))
        # Half-extents of the rotated ellipse's bounding box.
        width = np.hypot(major * np.cos(angle), minor * np.sin(angle))
        height = np.hypot(major * np.sin(angle), minor * np.cos(angle))
        if width + 1 <= half / 2 and height + 1 <= half:
            break
    else:
        raise ValueError(f"grounding data: a {config.distractor_aspect}:1 distractor does not fit a half at {size} px")
    dx = rng.uniform(half + width + 1, size - width - 1)
    centre = (float(size - dx if not left else dx), float(rng.uniform(height + 1, size - height - 1)))
    return Scene(
        background=background,
        radius=radius,
        lesion=(float(cx), float(cy)),
        distractor=centre,
        angle=angle,
        lesion_delta=deltas[0],
        distractor_delta=deltas[1],
        grey=grey,
        aspect=config.distractor_aspect,
    )


def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel centres (x, y): the image spans [0, size] and its vertical midline is x = size / 2."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    return xx, yy


def disc(size: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    xx, yy = grid(size)
    return 1.0 / (1.0 + np.exp((np.hypot(xx - centre[0], yy - centre[1]) - radius) / EDGE_PX))


def ellipse(size: int, centre: tuple[float, float], radius: float, aspect: float, angle: float) -> np.ndarray:
    """A soft-edged ellipse of the disc's area (semi-axes radius * sqrt(aspect), radius / sqrt(aspect))."""
    xx, yy = grid(size)
    x, y = xx - centre[0], yy - centre[1]
    u, v = x * np.cos(angle) + y * np.sin(angle), -x * np.sin(angle) + y * np.cos(angle)
    major, minor = radius * np.sqrt(aspect), radius / np.sqrt(aspect)
    rho = np.maximum(np.hypot(u / major, v / minor), 1e-9)
    # How far outside (negative: inside) the edge a pixel lies along the ray from the centre, so the edge is as
    # soft as the disc's in every direction.
    beyond = np.hypot(u, v) * (1.0 - 1.0 / rho)
    return 1.0 / (1.0 + np.exp(beyond / EDGE_PX))


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
        if pixels.max() > 255:
            pixels = pixels / pixels.max() * 255
        found.append((Path(name).stem, pixels))
    return found


def crop(rng: np.random.Generator, image: np.ndarray, size: int, grey: tuple[int, int]) -> np.ndarray:
    """A random square crop (30-70% of the shorter side), resized to ``size`` and stretched so that its
    2nd-98th percentiles span ``grey`` (clipped there): every background reaches both ends of the range,
    so a lesion kept inside it is never the darkest or brightest thing by construction."""
    from PIL import Image

    height, width = image.shape
    side = int(min(height, width) * rng.uniform(0.3, 0.7))
    y0 = int(rng.integers(0, height - side + 1))
    x0 = int(rng.integers(0, width - side + 1))
    patch = Image.fromarray(image[y0 : y0 + side, x0 : x0 + side]).resize((size, size), Image.Resampling.BILINEAR)
    values = np.asarray(patch, dtype=np.float64)
    low, high = np.percentile(values, [2, 98])
    if high - low < 1:  # a flat crop: a gradient keeps both ends of the range present
        values = np.tile(np.linspace(0, 1, size), (size, 1))
        low, high = 0.0, 1.0
    return np.clip((values - low) / (high - low), 0, 1) * (grey[1] - grey[0]) + grey[0]
