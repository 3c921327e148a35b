"""Saliency maps onto an image: resized and blurred as MedKLIP's heatmaps are, thresholded into a
region's mask, and their peaks (SAM's point prompts). A heatmap file's map and the attention
localizer's relevance map go through the same functions."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from tasks.config import HeatmapConfig

PEAK_SUPPRESSION = 0.1  # peaks picked for SAM points lie at least this fraction of the shorter side apart
PEAK_FLOOR = 0.5  # a further peak must reach half the (0-1 scaled) map's maximum, or it is background


def map_peaks(saliency: np.ndarray, grid: tuple[int, ...], count: int) -> list[tuple[int, int]]:
    """Up to ``count`` (y, x) maxima of a smoothed map, spread apart, each at the centre of one of the
    ``grid`` cells the map was made of. Not the smoothed map's own maximum: bilinear resizing holds a
    border cell's value flat out to the image's edge and the blur's reflection then makes the outermost
    pixel row or column the strict maximum (a 4 x 4 map's best border cell pointed outside every lesion
    box; a point prompt on the image's edge). A map at the image's resolution is unchanged."""
    height, width = saliency.shape
    centres = np.zeros_like(saliency, dtype=bool)
    rows = ((np.arange(grid[0]) + 0.5) * height / grid[0]).astype(int)
    cols = ((np.arange(grid[1]) + 0.5) * width / grid[1]).astype(int)
    centres[np.ix_(rows, cols)] = True
    remaining = np.where(centres, saliency, -1.0)
    radius = PEAK_SUPPRESSION * min(height, width)
    yy, xx = np.mgrid[0:height, 0:width]
    points: list[tuple[int, int]] = []
    for _ in range(count):
        y, x = np.unravel_index(int(np.argmax(remaining)), remaining.shape)
        if points and remaining[y, x] <= PEAK_FLOOR:
            break
        points.append((int(y), int(x)))
        remaining[(yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = -1.0
    return points


def smooth(raw: np.ndarray, height: int, width: int, config: HeatmapConfig) -> np.ndarray | None:
    """A 2-D map resized to the image, blurred, scaled to [0, 1]; None when it is flat."""
    resized = np.asarray(Image.fromarray(raw.astype(np.float32), mode="F").resize((width, height), Image.BILINEAR))
    kernel = config.blur_kernel_px
    if kernel is None:
        blurred = ndimage.gaussian_filter(resized, sigma=config.blur_sigma * min(height, width))
    else:
        # OpenCV's GaussianBlur((n, n), 0): its sigma for the side, cut at the kernel's radius, mirrored edges.
        sigma = 0.3 * ((kernel - 1) / 2 - 1) + 0.8
        blurred = ndimage.gaussian_filter(resized, sigma=sigma, truncate=(kernel // 2) / sigma, mode="mirror")
    low, high = float(blurred.min()), float(blurred.max())
    if high - low <= 1e-12 * max(abs(high), 1.0):
        return None
    return (blurred - low) / (high - low)


def threshold(saliency: np.ndarray, config: HeatmapConfig) -> np.ndarray:
    statistic = config.statistic
    if statistic == "mean":
        cut = float(saliency.mean())
    elif statistic == "mean_minus_std":
        cut = float(saliency.mean() - saliency.std())
    elif statistic == "quantile":
        cut = float(np.quantile(saliency, config.quantile))
    else:
        cut = config.max_fraction * float(saliency.max())
    return saliency > cut
