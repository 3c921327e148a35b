"""Stage noise: forward-diffusion noise on the lesion region."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from tasks.config.base import OPERATIONAL, StageConfig


class NoiseConfig(StageConfig):
    """Forward-diffusion noise x_k = sqrt(abar_k) x0 + sqrt(1 - abar_k) eps on the lesion region."""

    mode: Literal["local", "global"] = Field(
        default="local",
        description="local: inside the region only; global: whole image (the paper's ablation), same samples",
    )
    k: int = Field(default=500, ge=1, description="Diffusion step (1..timesteps); POVID used 500")
    timesteps: int = Field(default=1000, ge=1, description="Length T of the linear beta schedule")
    beta_start: float = Field(default=1e-4, gt=0.0, description="beta_1")
    beta_end: float = Field(default=0.02, gt=0.0, lt=1.0, description="beta_T")
    feather_px: float = Field(
        default=4.0, ge=0.0, description="Noise ramps up over this many pixels inside the region edge"
    )
    seed: int = Field(default=0, description="Mixed with each sample_id into that sample's noise seed")
    workers: int = Field(
        json_schema_extra=OPERATIONAL,
        default=2,
        ge=1,
        description="Threads noising samples in parallel (PNG codecs and numpy release the GIL)",
    )

    @model_validator(mode="after")
    def _step_in_schedule(self) -> NoiseConfig:
        if self.k > self.timesteps:
            raise ValueError(f"k={self.k} is past the schedule's last step (timesteps={self.timesteps})")
        if self.beta_end < self.beta_start:
            raise ValueError("beta_end must be at least beta_start")
        return self
