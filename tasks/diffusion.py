"""Forward-diffusion noise on an image region: the maths the noise stage (and research on top
of the product) share.

``x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps`` with ``x0`` the image scaled to [-1, 1],
blended into the original by a per-pixel weight, so pixels the weight leaves at 0 stay bit
for bit. A sample's noise depends only on its seed (``sample_seed``).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from tasks.config import NoiseConfig
from tasks.store import content_hash


def alphas_cumprod(timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """abar_k for k = 1..T at index k - 1 (DDPM's linear schedule)."""
    betas = np.linspace(beta_start, beta_end, timesteps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def alpha_bar(config: NoiseConfig) -> float:
    return float(alphas_cumprod(config.timesteps, config.beta_start, config.beta_end)[config.k - 1])


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


def noise_array(pixels: np.ndarray, weight: np.ndarray | None, abar: float, seed: int) -> np.ndarray:
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
    low, high = value_range(pixels)
    crop = pixels[window]
    x0 = (crop.astype(np.float32) - low) * np.float32(2.0 / (high - low)) - 1.0
    eps = np.random.default_rng(seed).standard_normal(crop.shape, dtype=np.float32)
    xk = forward_diffuse(x0, eps, abar)
    if local is not None:
        xk = x0 + local * (xk - x0)
    back = np.rint((np.clip(xk, -1.0, 1.0) + 1.0) * np.float32((high - low) / 2.0) + low).astype(pixels.dtype)
    out = pixels.copy()
    out[window] = back if local is None else np.where(local > 0, back, crop)
    return out
