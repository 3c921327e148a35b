"""Lesion regions and where they come from: one ``Localizer`` interface, three sources.

``annotation`` (the data set's own masks/boxes), ``sam`` (segment-anything prompted by the
sample's boxes, or by heatmap peaks when it has none) and ``heatmap`` (a saliency map per
image, blurred and thresholded as MedKLIP's attention maps are). A sample without a usable
region gets status ``no_region`` and a reason, never a made-up region.

Regions must be lesions: a box counts only when its label names a disease or finding
(``LesionLabels``), so SLAKE's organ boxes ("Liver", "Lung") are neither regions nor SAM
prompts. A box ingested without a label is the user's declared lesion (``UNLABELED_BOX``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from scipy import ndimage

from models.lesions import LesionVocabulary, label_words
from tasks.catalog import UNLABELED_BOX
from tasks.config import AnnotationConfig, ConfigError, HeatmapConfig, LocalizeConfig, SamConfig
from tasks.imaging import load_array, readable_array
from tasks.localize.maps import map_peaks, smooth, threshold
from tasks.store import content_hash, safe_stem, tree_digest


@dataclass(frozen=True)
class Region:
    status: str  # ok | no_region | failed
    reason: str | None = None
    mask: np.ndarray | None = None  # (H, W) bool when ok
    boxes: list[list[float]] = field(default_factory=list)
    confidence: float | None = None
    source: str | None = None  # the localizer that made it, where a chain tried several


def no_region(reason: str) -> Region:
    return Region("no_region", reason)


def failed(reason: str) -> Region:
    return Region("failed", reason)


class Localizer(Protocol):
    source: str

    def locate(self, rows: Sequence[Mapping[str, Any]]) -> list[Region]:
        """One Region per SAMPLES row, in order; rows of one image should come together."""
        ...


# --- which boxes are lesions ----------------------------------------------------------------


class LesionLabels:
    """Tells a lesion's box label from an organ's (models.lesions: whole words, plurals, negation),
    or is the label of an unlabeled box."""

    def __init__(self, terms: Sequence[str]):
        self.vocabulary = LesionVocabulary(terms)

    def __call__(self, label: str) -> bool:
        return label_words(label) == [UNLABELED_BOX] or self.vocabulary.is_lesion(label)

    def boxes(self, row: Mapping[str, Any]) -> list[Sequence[float]] | None:
        """The row's lesion boxes; None when its labels do not pair up with its boxes."""
        if len(row["box_labels"]) != len(row["boxes"]):
            return None
        return [box for box, label in zip(row["boxes"], row["box_labels"]) if self(label)]


# --- shared geometry ---------------------------------------------------------------------


def clip_boxes(boxes: Iterable[Sequence[float]], width: int, height: int) -> list[list[float]]:
    """Boxes clipped to the image; boxes with no area left are dropped."""
    kept = []
    for box in boxes or ():
        x0, y0, x1, y1 = (float(v) for v in box)
        x0, x1 = sorted((min(max(x0, 0.0), width), min(max(x1, 0.0), width)))
        y0, y1 = sorted((min(max(y0, 0.0), height), min(max(y1, 0.0), height)))
        if x1 - x0 >= 1 and y1 - y0 >= 1:
            kept.append([x0, y0, x1, y1])
    return kept


def boxes_mask(boxes: Sequence[Sequence[float]], height: int, width: int, margin: float = 0.0) -> np.ndarray:
    """Filled boxes (pixel centres inside), each grown by ``margin`` x its own size."""
    mask = np.zeros((height, width), dtype=bool)
    for x0, y0, x1, y1 in boxes:
        dx, dy = margin * (x1 - x0), margin * (y1 - y0)
        c0, c1 = int(np.ceil(x0 - dx - 0.5)), int(np.ceil(x1 + dx - 0.5))
        r0, r1 = int(np.ceil(y0 - dy - 0.5)), int(np.ceil(y1 + dy - 0.5))
        mask[max(r0, 0) : max(r1, 0), max(c0, 0) : max(c1, 0)] = True
    return mask


def component_boxes(mask: np.ndarray) -> list[list[float]]:
    labelled, _ = ndimage.label(mask)
    return [
        [float(s[1].start), float(s[0].start), float(s[1].stop), float(s[0].stop)]
        for s in ndimage.find_objects(labelled)
    ]


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    if mask.shape == (height, width):
        return mask
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.NEAREST)) > 0


def finish(region: Region, config: LocalizeConfig) -> tuple[Region, float | None]:
    """Apply the area limits; return the region (maybe turned into no_region) and its area fraction."""
    if region.status != "ok":
        return region, None
    area = float(region.mask.mean())
    if area == 0.0:
        return no_region("empty_region"), area
    if area < config.min_area_fraction:
        return no_region("region_too_small"), area
    if area > config.max_area_fraction:
        return no_region("region_too_large"), area
    return region, area


# --- annotation ----------------------------------------------------------------------------


class AnnotationLocalizer:
    source = "annotation"

    def __init__(self, config: AnnotationConfig, lesions: LesionLabels):
        self.config = config
        self.lesions = lesions

    def locate(self, rows: Sequence[Mapping[str, Any]]) -> list[Region]:
        return [self.locate_one(row) for row in rows]

    def locate_one(self, row: Mapping[str, Any]) -> Region:
        height, width = int(row["height"]), int(row["width"])
        lesion_boxes = self.lesions.boxes(row)
        if lesion_boxes is None:
            return failed("box_labels_mismatch")
        boxes = clip_boxes(lesion_boxes, width, height)
        has_mask = bool(row.get("mask_path")) and self.config.mask_marks == "lesions"
        prefer = self.config.prefer
        use_mask = has_mask and (prefer != "boxes" or not boxes)
        use_boxes = bool(boxes) and (prefer != "mask" or not has_mask)
        if not use_mask and not use_boxes:
            if lesion_boxes:
                return no_region("boxes_outside_image")
            # Organ boxes, or an organ mask: annotated, but nothing in it is a lesion.
            return no_region("no_lesion_label" if row["boxes"] or row.get("mask_path") else "no_annotation")
        region = np.zeros((height, width), dtype=bool)
        used: list[list[float]] = []
        if use_boxes:
            region |= boxes_mask(boxes, height, width)
            used += boxes
        if use_mask:
            try:
                mask = annotation_mask(Path(row["mask_path"]), height, width)
            except FileNotFoundError:
                return failed("missing_mask")
            except (OSError, ValueError, SyntaxError):
                return failed("unreadable_mask")
            region |= mask
            used += component_boxes(mask)
        return Region("ok", mask=region, boxes=used, confidence=self.config.confidence)


def annotation_mask(path: Path, height: int, width: int) -> np.ndarray:
    """Any non-zero pixel of a lesion mask (used only when the data set's masks mark lesions)."""
    pixels = load_array(path)
    mask = pixels.any(axis=2) if pixels.ndim == 3 else pixels > 0
    return resize_mask(mask, height, width)


# --- heatmap -----------------------------------------------------------------------------


def heatmap_file(folder: Path, row: Mapping[str, Any]) -> Path | None:
    """A sample's map: its image's (named by the image's content), else its own (by sample_id)."""
    for name in (row["image_sha256"], safe_stem(row["sample_id"])):
        for suffix in (".npy", ".png"):
            path = folder / f"{name}{suffix}"
            if path.is_file():
                return path
    return None


class HeatmapLocalizer:
    source = "heatmap"

    def __init__(self, config: HeatmapConfig):
        if config.maps is None:
            raise ConfigError("localize.heatmap.maps must name the folder of saliency maps")
        self.config = config
        self.folder = Path(config.maps)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"heatmap folder {self.folder} does not exist")
        sidecar = self.folder / "confidences.json"
        self.confidences: dict[str, float] = json.loads(sidecar.read_text()) if sidecar.is_file() else {}

    def raw(self, path: Path) -> np.ndarray:
        """The map as stored, one channel."""
        raw = np.load(path, allow_pickle=False) if path.suffix == ".npy" else load_array(path)
        raw = np.nan_to_num(np.asarray(raw, dtype=np.float32))
        if raw.ndim == 3:
            raw = raw.mean(axis=2)
        if raw.ndim != 2:
            raise ValueError(f"{path}: a heatmap must be 2-D, got shape {raw.shape}")
        return raw

    def locate(self, rows: Sequence[Mapping[str, Any]]) -> list[Region]:
        return [self.locate_one(row) for row in rows]

    def locate_one(self, row: Mapping[str, Any]) -> Region:
        path = heatmap_file(self.folder, row)
        if path is None:
            return no_region("no_heatmap")
        try:
            saliency = smooth(self.raw(path), int(row["height"]), int(row["width"]), self.config)
        except OSError:
            return failed("unreadable_heatmap")
        except ValueError:
            return failed("bad_heatmap")
        if saliency is None:
            return no_region("flat_heatmap")
        given = self.confidences.get(path.stem)
        return map_region(saliency, self.config, None if given is None else float(given), "flat_heatmap")

    def peaks(self, row: Mapping[str, Any], count: int) -> np.ndarray | None:
        """Up to ``count`` (x, y) maxima of the saliency map, spread apart, for SAM point prompts."""
        path = heatmap_file(self.folder, row)
        if path is None:
            return None
        raw = self.raw(path)
        saliency = smooth(raw, int(row["height"]), int(row["width"]), self.config)
        if saliency is None:
            return None
        return np.asarray([[float(x), float(y)] for y, x in map_peaks(saliency, raw.shape, count)])


def map_region(saliency: np.ndarray, config: HeatmapConfig, confidence: float | None, flat: str) -> Region:
    """A smoothed map thresholded into a region; its confidence the given probability, else the
    map's contrast (mean inside minus mean outside)."""
    mask = threshold(saliency, config)
    if not mask.any() or mask.all():
        return no_region(flat)
    if confidence is None:
        confidence = float(saliency[mask].mean() - saliency[~mask].mean())
    return Region("ok", mask=mask, boxes=component_boxes(mask), confidence=float(np.clip(confidence, 0.0, 1.0)))


# --- segment-anything ------------------------------------------------------------------------


class SamLocalizer:
    source = "sam"

    def __init__(self, config: SamConfig, heatmap: HeatmapConfig, lesions: LesionLabels):
        from models import precision, resident
        from models.sam import PREPROCESS_THREADS, SamSegmenter, batch_size, load_sam

        self.config = config
        self.lesions = lesions
        self.heatmap = HeatmapLocalizer(heatmap) if heatmap.maps is not None else None
        device = str(precision.resolve(config.device, "localize.sam"))
        architecture = config.architecture.model_dump()
        # Once per worker process, not per shard (read-only inference: the threads share the copy).
        weights = tree_digest(config.checkpoint) if config.checkpoint is not None else None
        key = ("sam", config.model_type, weights, content_hash(architecture), device)
        sam = resident.held(key, lambda: load_sam(config.model_type, config.checkpoint, architecture, device)).value
        bf16 = config.precision == "bf16" or (config.precision == "auto" and device == "cuda")
        self.segmenter = SamSegmenter(sam, config.preprocessing, encoder_bf16=bf16)
        self.batch_size = batch_size(config.batch_size, device)
        self.read_threads = PREPROCESS_THREADS

    def prompt(self, row: Mapping[str, Any]) -> tuple[Any, Region | None]:
        from models.sam import Prompt

        lesion_boxes = self.lesions.boxes(row)
        if lesion_boxes is None:
            return None, failed("box_labels_mismatch")
        boxes = clip_boxes(lesion_boxes, int(row["width"]), int(row["height"]))
        if boxes:
            return Prompt(boxes=np.asarray(boxes)), None
        if self.heatmap is None:
            # An organ box would make SAM segment the organ: without a lesion box there is no prompt.
            return None, no_region("no_lesion_label" if row["boxes"] and not lesion_boxes else "no_prompt")
        try:
            points = self.heatmap.peaks(row, self.config.num_points)
        except OSError:
            return None, failed("unreadable_heatmap")
        except ValueError:
            return None, failed("bad_heatmap")
        if points is None:
            return None, no_region("no_prompt")
        return Prompt(points=points), None

    def locate(self, rows: Sequence[Mapping[str, Any]]) -> list[Region]:
        prompts, regions = zip(*(self.prompt(row) for row in rows)) if rows else ((), ())
        return self.segment(rows, prompts, regions)

    def segment(
        self, rows: Sequence[Mapping[str, Any]], prompts: Sequence[Any], regions: Sequence[Region | None]
    ) -> list[Region]:
        """Each row's region: the given one, else SAM's for its prompt (one encoding per image,
        ``batch_size`` images per encoder pass)."""
        regions = list(regions)
        by_image: dict[str, list[tuple[int, Any]]] = {}
        for i, (row, prompt) in enumerate(zip(rows, prompts)):
            if regions[i] is None:
                by_image.setdefault(row["image_path"], []).append((i, prompt))
        images = list(by_image)
        with ThreadPoolExecutor(self.read_threads) as reading:  # a batch's images decoded in parallel
            for start in range(0, len(images), self.batch_size):
                self._segment_batch(images[start : start + self.batch_size], by_image, regions, reading)
        return regions

    def _segment_batch(self, chunk: list[str], by_image: dict[str, list], regions: list, reading: Any) -> None:
        """Segment one batch of images into ``regions`` (by the rows' indices)."""
        batch, pixels = [], []
        for path, image_pixels in zip(chunk, reading.map(readable_array, chunk)):
            if image_pixels is None:
                for i, _ in by_image[path]:
                    regions[i] = failed("unreadable_image")
            else:
                pixels.append(image_pixels)
                batch.append(path)
        if not batch:
            return
        try:
            segmentations = self.segmenter.segment(pixels, [[p for _, p in by_image[path]] for path in batch])
        except RuntimeError:  # e.g. out of memory on a huge batch: these samples fail, the stage goes on
            for path in batch:
                for i, _ in by_image[path]:
                    regions[i] = failed("sam_error")
            return
        for path, image_pixels, segs in zip(batch, pixels, segmentations):
            for (i, prompt), seg in zip(by_image[path], segs):
                regions[i] = self.region(prompt, seg, image_pixels.shape[:2])

    def region(self, prompt: Any, seg: Any, shape: tuple[int, int]) -> Region:
        mask = seg.mask
        boxes = [] if prompt.boxes is None else [list(map(float, b)) for b in prompt.boxes]
        if boxes and self.config.box_margin is not None:
            # A box prompt says where the lesion is; SAM spilling past it is a segmentation error.
            mask = mask & boxes_mask(boxes, shape[0], shape[1], self.config.box_margin)
        confidence = float(np.clip(np.mean(seg.predicted_iou), 0.0, 1.0))
        return Region("ok", mask=mask, boxes=boxes, confidence=confidence)
