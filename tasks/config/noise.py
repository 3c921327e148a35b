"""Stage noise: forward-diffusion noise on the lesion region."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from tasks.config.base import BY_CONTENT, OPERATIONAL, StageConfig

# OpenAI CLIP's image normalization (LLaVA-Med v1.5's vision tower, the paper's model).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Each schedule's own beta_1 and beta_T: POVID's sigmoid schedule, DDPM's linear one.
SCHEDULE_BETAS = {"sigmoid": (1e-5, 5e-3), "linear": (1e-4, 0.02)}


class NoiseConfig(StageConfig):
    """Forward-diffusion noise x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps on the lesion region
    (tasks.noise.diffusion). The defaults follow the paper's text and POVID (``add_diffusion_noise``'s
    schedule on the model's normalized input); the release's own curation script instead
    overwrote the heatmap region with N(0, 10) pixel noise (docs/visual-pairs.md)."""

    mode: Literal["local", "global"] = Field(
        default="local",
        description="local: inside the region only; global: whole image (the paper's ablation), same samples",
    )
    schedule: Literal["sigmoid", "linear"] = Field(
        default="sigmoid",
        description=(
            "Beta schedule. sigmoid: sigmoid(linspace(-6, 6, T)) scaled into [beta_start, beta_end] (POVID's and "
            "the MMedPO release's; k=500 keeps 0.863 of the signal under 0.505 noise); linear: DDPM's (k=500: "
            "0.28 under 0.96, the lesion erased)"
        ),
    )
    k: int = Field(default=500, ge=0, description="Diffusion step, indexed from 0 as the release does (0..timesteps-1)")
    timesteps: int = Field(default=1000, ge=1, description="Length T of the beta schedule")
    beta_start: float | None = Field(
        default=None, gt=0.0, description="beta of the first step; unset: the schedule's (sigmoid 1e-5, linear 1e-4)"
    )
    beta_end: float | None = Field(
        default=None,
        gt=0.0,
        lt=1.0,
        description="beta of the last step; unset: the schedule's (sigmoid 5e-3, linear 0.02)",
    )
    space: Literal["auto", "clip", "unit", "minmax"] = Field(
        default="auto",
        description=(
            "Values the formula runs on. auto: the normalized input of the model the pairs are for (model_path: its "
            "processor's image_mean / image_std; SigLIP towers 0.5 / 0.5), CLIP's without one; "
            "clip: the model's normalized input, (v - clip_mean) / clip_std per channel "
            "with v the pixel in [0, 1] (the paper: LLaVA-Med's CLIP tower); unit: 2v - 1 (towers normalizing with "
            "mean = std = 0.5, e.g. SigLIP); minmax: 2v - 1 with v scaled by the image's own min..max. v is pixel/255 "
            "for 8-bit images and the image's own min..max for 16-bit ones (how they are rendered for a model)"
        ),
    )
    model_path: Path | None = Field(
        json_schema_extra=BY_CONTENT,
        default=None,
        description="space=auto: the VLM the pairs are for (by content); set from the run's top-level model",
    )
    clip_mean: tuple[float, float, float] = Field(
        default=CLIP_MEAN, description="Per-channel (R, G, B) mean of space=clip; a grey image uses their average"
    )
    clip_std: tuple[float, float, float] = Field(
        default=CLIP_STD, description="Per-channel (R, G, B) std of space=clip; a grey image uses their average"
    )
    channels: Literal["shared", "independent"] = Field(
        default="shared",
        description=(
            "shared: one noise field for every channel of a grey image (also an RGB file whose channels are equal "
            "in the region), one per channel for a colour image; independent: one per channel always (the release, "
            "which paints colour on a grey scan)"
        ),
    )
    feather_px: float = Field(
        default=4.0, ge=0.0, description="Noise ramps up over this many pixels inside the region edge"
    )
    seed: int = Field(default=0, description="Mixed into every noise seed (see seed_per)")
    seed_per: Literal["image", "sample"] = Field(
        default="image",
        description=(
            "image: one noised image per distinct (image content, region mask content, noise settings), seeded by "
            "the image's content digest and shared by every question on that image (SLAKE and VQA-RAD ask many "
            "per image); sample: each sample its own noise, seeded by its sample_id"
        ),
    )
    workers: int = Field(
        json_schema_extra=OPERATIONAL,
        default=2,
        ge=1,
        description="Threads noising samples in parallel (PNG codecs and numpy release the GIL)",
    )

    @model_validator(mode="after")
    def _step_in_schedule(self) -> NoiseConfig:
        if self.k >= self.timesteps:
            raise ValueError(f"k={self.k} is past the schedule's last step (k counts from 0 to timesteps-1)")
        start, end = self.betas
        if end < start:
            raise ValueError(f"beta_end ({end}) must be at least beta_start ({start})")
        if min(self.clip_std) <= 0:
            raise ValueError("clip_std must be positive")
        return self

    @property
    def betas(self) -> tuple[float, float]:
        """(beta_start, beta_end) in effect: the given ones, else the schedule's."""
        default_start, default_end = SCHEDULE_BETAS[self.schedule]
        return (
            default_start if self.beta_start is None else self.beta_start,
            default_end if self.beta_end is None else self.beta_end,
        )


# The schedule lives beside its settings: load-time checks (tasks.config.checks) weigh the noise
# a config asks for without importing the noise stage.
def alphas_cumprod(config: NoiseConfig) -> np.ndarray:
    """abar_k for k = 0..T-1 (abar_k = prod_{i <= k} (1 - beta_i)), in float64."""
    start, end = config.betas
    if config.schedule == "sigmoid":
        ramp = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, config.timesteps, dtype=np.float64)))
        betas = ramp * (end - start) + start
    else:
        betas = np.linspace(start, end, config.timesteps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def alpha_bar(config: NoiseConfig) -> float:
    return float(alphas_cumprod(config)[config.k])
