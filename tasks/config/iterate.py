"""`mmedpo iterate`: rounds of curate -> train -> evaluate, each curating from the model just trained."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

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
    endpoint_model: str | None = Field(
        default=None,
        description=(
            "With hallucinate.target.endpoint: the model name the server serves round r's adapter under, a "
            "template with {round} (the round that trained it), e.g. 'mmedpo-r{round}' for `vllm serve ... "
            "--enable-lora --lora-modules mmedpo-r1=<adapter>` (docs/scale.md). Round 1 samples "
            "target.endpoint.model (the base model); round r + 1 this name of round r's adapter"
        ),
    )

    @field_validator("endpoint_model")
    @classmethod
    def _one_name_per_round(cls, template: str | None) -> str | None:
        if template is None:
            return None
        try:
            names = {template.format(round=1), template.format(round=2)}
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{template!r}: only {{round}} may be filled in ({type(exc).__name__}: {exc})") from None
        if len(names) == 1:
            raise ValueError(f"{template!r} names one model for every round: put {{round}} in it")
        return template


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
    endpoint, template = hallucinate.target.endpoint, config.iterate.endpoint_model
    if endpoint is not None and template is None:
        problems.append(
            "iterate.endpoint_model: unset, but hallucinate.target.endpoint samples the target: rounds after the first "
            "must sample the previous round's adapter; name it as the server serves it, e.g. 'mmedpo-r{round}' "
            "(vllm serve ... --enable-lora --lora-modules mmedpo-r1=<adapter>; docs/scale.md)"
        )
    if endpoint is None and template is not None:
        problems.append("iterate.endpoint_model: only for hallucinate.target.endpoint, which is unset")
    if endpoint is not None and endpoint.serve is not None:
        problems.append(
            "hallucinate.target.endpoint.serve: a server the run starts serves no round adapters; point "
            "target.endpoint at a vLLM server started with --enable-lora (docs/scale.md)"
        )
    if not set(config.iterate.splits) & set(train.splits):
        problems.append(
            f"iterate.splits: {config.iterate.splits} has no split that train.splits ({train.splits}) trains"
        )
    if problems:
        raise ConfigError(f"{origin}: " + "; ".join(problems))
