"""Stage assemble: which pairs make the preference set."""

from __future__ import annotations

from pydantic import Field

from tasks.config.base import StageConfig
from tasks.config.window import SampleWindow


class AssembleConfig(StageConfig):
    """Which pairs make the preference set, and what counts as test-split leakage."""

    text_pairs: bool = Field(
        default=True,
        description="Build text pairs (ground truth vs hallucination); off = the paper's visual-only ablation",
    )
    visual_pairs: bool = Field(
        default=True, description="Build visual pairs (original vs lesion-noised image); off = text-only ablation"
    )
    test_splits: list[str] = Field(
        default=["test"], description="Splits held out: no pairs from them, and pairs leaking into them are dropped"
    )
    near_duplicate_bits: int | None = Field(
        default=8,
        ge=0,
        le=256,
        description=(
            "Also drop pairs whose image is within this many bits (of 256) of a test image's perceptual hash: "
            "re-encoded or resized copies; None turns the check off"
        ),
    )
    window: SampleWindow | None = Field(
        default=None,
        description="Only samples inside this window make pairs (set per round by `mmedpo iterate`); unset: all",
    )
