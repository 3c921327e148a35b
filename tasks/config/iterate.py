"""`mmedpo iterate`: rounds of curate -> train -> evaluate, each curating from the model just trained."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.config.base import StageConfig


class IterateConfig(StageConfig):
    """Iterative on-policy rounds (flows/iterate.py). Round r curates with the ``target``
    hallucination backend sampling the model of round r - 1 (round 1: the base model, ``train.model``),
    trains, and evaluates. Not a stage: each round runs the ordinary stages with their sections
    of this file, changed only where a round must differ (the sampled adapter, the sample window,
    the adapter training starts from, the set's name ``<name>-r<round>``)."""

    rounds: int = Field(default=2, ge=1, description="Rounds run (`mmedpo iterate --rounds N` overrides it)")
    train_from: Literal["previous", "base"] = Field(
        default="previous",
        description=(
            "previous: round r continues training round r-1's adapter on round r's set; base: round r trains a "
            "new adapter from the base model on the union of rounds 1..r's sets. Either way the DPO reference is "
            "the base model (adapters disabled)"
        ),
    )
    samples_per_round: int | None = Field(
        default=None,
        ge=1,
        description=(
            "New samples curated each round (each gives at most one text and one visual pair): round r takes the "
            "next window of a fixed shuffled order, wrapping around; unset: every sample every round"
        ),
    )
    splits: list[str] = Field(
        default=["train"], description="Sample splits curated each round (hallucinate.splits and the window's)"
    )
    seed: int = Field(default=0, description="Seed of the shuffled sample order the windows walk through")
