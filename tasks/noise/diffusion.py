"""Forward-diffusion noise on an image region: the maths the noise stage (and research on top
of the product) share.

The lineage matched is ``add_diffusion_noise`` of POVID (from VCD), which the MMedPO release's
trainer carries (``train/dpo/train_dpo_weighted.py``): ``beta = sigmoid(linspace(-6, 6, 1000))
* (5e-3 - 1e-5) + 1e-5``, ``abar = cumprod(1 - beta)`` indexed from 0 at the step (500), and
``x_k = sqrt(abar) x0 + sqrt(1 - abar) eps`` on the model's normalized input tensor (CLIP's
per-channel mean/std for LLaVA-Med). Not matched: the release's curation script, which
overwrites the region with N(0, 10) speckle instead.

Where this differs from the release, each by design: the result is stored as pixels (the
tensor mapped back through the inverse normalization, clipped to the pixel range once at the
end and rounded, so the model's processor sees x_k up to rounding); a grey image gets one
noise field for all its channels (the release draws one per channel: colour speckle on a grey
scan, a cue that has nothing to do with the lesion; ``channels: independent`` reproduces it);
the noise is blended into the original by a per-pixel weight, so pixels the weight leaves at
0 are copied bit for bit. A sample's noise depends only on its seed (``sample_seed``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tasks.config import NoiseConfig
from tasks.config.noise import alpha_bar
from tasks.store import content_hash


def forward_diffuse(x0: np.ndarray, eps: np.ndarray, abar: float) -> np.ndarray:
    return np.sqrt(abar, dtype=np.float32) * x0 + np.sqrt(1.0 - abar, dtype=np.float32) * eps


def sample_seed(sample_id: str, seed: int) -> int:
    return int(content_hash(sample_id, seed, length=15), 16)


def feather(mask: np.ndarray, width: float) -> np.ndarray:
    """Noise weight in [0, 1]: 0 outside the mask, rising to 1 over ``width`` px inside its edge."""
    if width <= 0:
        return mask.astype(np.float32)
    weight = np.zeros(mask.shape, dtype=np.float32)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(rows):
        return weight
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    # Edge padding: a lesion cut by the image frame is noised right up to the frame.
    # The distance transform runs on the mask's bounding box plus a one-pixel ring only:
    # the nearest outside pixel of any mask pixel is never farther than that ring.
    ring = np.pad(mask, 1, mode="edge")[r0 : r1 + 2, c0 : c1 + 2]
    distance = (
        ndimage.distance_transform_edt(ring)[1:-1, 1:-1] if not ring.all() else np.full((r1 - r0, c1 - c0), np.inf)
    )
    weight[r0:r1, c0:c1] = np.clip(distance / width, 0.0, 1.0)
    return weight


def value_range(pixels: np.ndarray) -> tuple[float, float]:
    """The image's own range (16-bit images rarely use all 16 bits); a flat image: its dtype's."""
    low, high = float(pixels.min()), float(pixels.max())
    if high > low:
        return low, high
    return 0.0, float(np.iinfo(pixels.dtype).max)


def pixel_range(pixels: np.ndarray, space: str) -> tuple[float, float]:
    """The pixel values that map to v = 0 and v = 1, which are also the range the result is clipped to.

    8-bit images: 0..255, as a model's processor reads them (pixel / 255). 16-bit images have no
    such fixed reading; a viewer or SAM (models.sam.to_rgb8) stretches them over their own
    range, so that is their [0, 1] - and clipping to it keeps the stretch, hence every pixel
    outside the region, the same after noising. ``minmax``: the own range for every image.
    """
    if space != "minmax" and pixels.dtype == np.uint8:
        return 0.0, 255.0
    return value_range(pixels)


def normalization(config: NoiseConfig, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean, std) with x0 = (v - mean) / std; a grey image averages the three. ``auto``
    here is CLIP's: the stage resolves a named model's own statistics first (tasks.noise.resolved)."""
    if config.space not in ("clip", "auto"):
        return np.full(channels, 0.5, dtype=np.float32), np.full(channels, 0.5, dtype=np.float32)
    mean, std = np.asarray(config.clip_mean, dtype=np.float32), np.asarray(config.clip_std, dtype=np.float32)
    if channels == 1:
        return mean.mean(keepdims=True), std.mean(keepdims=True)
    return mean, std


def is_grey(crop: np.ndarray) -> bool:
    """A single channel, or RGB whose channels are equal (grey scans are often saved as RGB)."""
    return crop.ndim == 2 or bool((crop == crop[:, :, :1]).all())


def noise_array(pixels: np.ndarray, weight: np.ndarray | None, config: NoiseConfig, seed: int) -> np.ndarray:
    """Noised copy of an image from ``load_array`` (gray uint8/uint16 or RGB uint8).

    ``weight`` (H, W) in [0, 1] blends x0 into x_k per pixel; None noises everything. Only
    the bounding box of the weight's support is computed: the rest is copied.
    """
    if weight is None:
        window: tuple[slice, ...] = (slice(None), slice(None))
        local = None
    else:
        rows, cols = np.flatnonzero(weight.any(axis=1)), np.flatnonzero(weight.any(axis=0))
        if not len(rows):
            return pixels.copy()
        window = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
        local = weight[window]
        if pixels.ndim == 3:
            local = local[:, :, None]
    low, high = pixel_range(pixels, config.space)
    crop = pixels[window]
    mean, std = normalization(config, 1 if crop.ndim == 2 else crop.shape[2])
    if crop.ndim == 2:
        mean, std = mean[0], std[0]
    scale = np.float32(high - low)
    x0 = ((crop.astype(np.float32) - np.float32(low)) / scale - mean) / std
    shared = config.channels == "shared" and is_grey(crop)
    rng = np.random.default_rng(seed)
    eps = rng.standard_normal(crop.shape[:2] if shared else crop.shape, dtype=np.float32)
    if shared and crop.ndim == 3:
        eps = eps[:, :, None]
    xk = forward_diffuse(x0, eps, alpha_bar(config))
    if local is not None:
        xk = x0 + local * (xk - x0)
    back = np.clip((xk * std + mean) * scale + np.float32(low), low, high)
    back = np.rint(back).astype(pixels.dtype)
    out = pixels.copy()
    out[window] = back if local is None else np.where(local > 0, back, crop)
    return out
