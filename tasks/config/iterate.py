"""`mmedpo iterate`: rounds of curate -> train -> evaluate, each curating from the model just trained."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tasks.config.base import ConfigError, StageConfig

if TYPE_CHECKING:  # run.py imports this module for RunConfig's iterate section
    from tasks.config.run import RunConfig


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


def check_iterate(config: RunConfig, origin: str = "run config") -> None:
    """What a round needs from the run file; a ConfigError naming ``origin`` and the field."""
    problems = []
    hallucinate, train = config.hallucinate, config.train
    if hallucinate.backend != "target":
        problems.append(
            f"hallucinate.backend: is {hallucinate.backend!r}; rounds sample the model just trained: set it to "
            "'target' (with target.selector: first and target.fallback: rules, no LLM is needed)"
        )
    if hallucinate.target.adapter is not None:
        problems.append("hallucinate.target.adapter: set by each round (the previous round's adapter); leave it unset")
    if train.init_adapter is not None:
        problems.append("train.init_adapter: set by each round (iterate.train_from); leave it unset")
    if config.sft is not None:
        problems.append(
            "sft: not run by iterate; run `mmedpo sft` first and make its checkpoint hallucinate.target.model_path"
        )
    base = hallucinate.target.model_path
    if train.model is not None and base is not None and Path(train.model).resolve() != Path(base).resolve():
        problems.append(
            f"train.model: {train.model} is not hallucinate.target.model_path ({base}): round 1 samples the model "
            "training starts from; leave train.model unset or make them the same"
        )
    if not set(config.iterate.splits) & set(train.splits):
        problems.append(
            f"iterate.splits: {config.iterate.splits} has no split that train.splits ({train.splits}) trains"
        )
    if problems:
        raise ConfigError(f"{origin}: " + "; ".join(problems))
