"""The grounding experiment's arms: one shared curation config, each arm changing one section.

``sft`` trains nothing after SFT; ``dpo_text`` has text pairs only (plain DPO on
hallucinated answers); ``mmedpo`` adds the lesion-noised visual pairs, weighted by the
judged score (the paper); ``mmedpo_anchor`` trains the same set with mDPO's anchor term;
``mmedpo_global`` noises the whole image instead of the lesion; ``mmedpo_unweighted`` gives
every pair the same weight - the mean of mmedpo's weights, so the step size is the same and
only the relative weighting differs; ``mmedpo_rounds`` is `mmedpo iterate`: round 1 samples
the SFT model for its rejections, round 2 the model round 1 trained, each round half the
steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.grounding.config import BackboneConfig, ExperimentConfig, RoundsConfig
from tasks.config import (
    AssembleConfig,
    EvaluateConfig,
    HallucinateConfig,
    IngestConfig,
    IterateConfig,
    NormalizerConfig,
    RunConfig,
    SourceConfig,
    TargetSamplingConfig,
)

LABELS = {
    "sft": "SFT only",
    "dpo_text": "SFT + DPO (text pairs)",
    "mmedpo": "SFT + MMedPO",
    "mmedpo_anchor": "SFT + MMedPO + anchor (mDPO)",
    "mmedpo_global": "SFT + MMedPO, global noise",
    "mmedpo_unweighted": "SFT + MMedPO, equal weights",
    "mmedpo_rounds": "SFT + MMedPO, 2 rounds",
}
# The arm whose curated set (text + local visual pairs) holds the held-out pairs every arm's margins are measured on.
REFERENCE_ARM = "mmedpo"
# Arms trained on another arm's preference set.
SAME_SET = {"mmedpo_anchor": "mmedpo"}
# Arms with a set of their own, curated once for every backbone and seed (rounds curate per model).
SET_ARMS = ("mmedpo", "dpo_text", "mmedpo_global", "mmedpo_unweighted")


def base_run_config(config: ExperimentConfig, source: Path) -> RunConfig:
    """The curation every arm shares; the arms change one section each."""
    return RunConfig(
        name=config.name,
        store=config.store,
        sets=config.sets,
        ingest=IngestConfig(sources=[SourceConfig(format="jsonl", root=source, name="grounding")]),
        # val needs rejections too: its pairs are the held-out margins.
        hallucinate=HallucinateConfig(splits=["train", "val"]),
        score=config.score,
        # Train and test crops come from the same few background images: the near-duplicate
        # check would drop most of the training set as leakage.
        assemble=AssembleConfig(near_duplicate_bits=None),
        evaluate=EvaluateConfig(
            meteor=False, max_new_tokens=4, batch_size=config.measure.batch_size, examples=4, splits=["test"]
        ),
    )


def arm_config(base: RunConfig, arm: str, mean_weight: float | None = None) -> RunConfig:
    """The arm's curation (``mean_weight``: mmedpo's mean pair weight, for ``mmedpo_unweighted``)."""
    arm = SAME_SET.get(arm, arm)
    if arm in ("sft", REFERENCE_ARM):
        update: dict[str, Any] = {}
    elif arm == "dpo_text":
        update = {"assemble": base.assemble.model_copy(update={"visual_pairs": False})}
    elif arm == "mmedpo_global":
        update = {"noise": base.noise.model_copy(update={"mode": "global"})}
    elif arm == "mmedpo_unweighted":
        if mean_weight is None:
            raise ValueError("mmedpo_unweighted: needs the mean weight of mmedpo's pairs")
        flat = NormalizerConfig(kind="paper", anchor=round(mean_weight, 4), gain=0.0)
        update = {"score": base.score.model_copy(update={"normalizer": flat})}
    elif arm == "mmedpo_rounds":
        update = {}
    else:
        raise ValueError(f"unknown arm {arm!r}")
    return base.model_copy(update={**update, "name": f"{base.name}-{arm.replace('_', '-')}"})


def train_settings(
    base: RunConfig, arm: str, backbone: BackboneConfig, seed: int, checkpoint: Path, learning_rate: float
) -> RunConfig:
    """The run config an arm trains and evaluates with, from the SFT checkpoint ``checkpoint``."""
    run = arm_config(base, arm, mean_weight=1.0)
    train = backbone.train.model_copy(
        update={
            "model": checkpoint,
            "seed": seed,
            "learning_rate": learning_rate,
            "projector_lr": learning_rate,
            "anchor_coef": backbone.anchor_coef if arm == "mmedpo_anchor" else 0.0,
        }
    )
    return run.model_copy(
        update={
            "name": f"{run.name}-{backbone.name}-s{seed}-lr{learning_rate:g}",
            "train": train,
            "evaluate": run.evaluate.model_copy(update={"model": checkpoint}),
        }
    )


def rounds_config(
    base: RunConfig,
    rounds: RoundsConfig,
    backbone: BackboneConfig,
    seed: int,
    checkpoint: Path,
    learning_rate: float,
) -> RunConfig:
    """`mmedpo iterate`'s run config for the 2-rounds arm: the target backend samples the model of
    the round before (round 1: the SFT checkpoint), picks the first sampled wrong answer and falls
    back to the rules; each round continues the last adapter for epochs / rounds (steps / rounds)."""
    run = train_settings(base, "mmedpo", backbone, seed, checkpoint, learning_rate)
    train = run.train
    update = (
        {"max_steps": max(1, train.max_steps // rounds.rounds)}
        if train.max_steps > 0
        else {"epochs": train.epochs / rounds.rounds}
    )
    target = TargetSamplingConfig(
        model_path=checkpoint,
        selector="first",
        fallback="rules",
        num_samples=rounds.num_samples,
        temperature=rounds.temperature,
        max_new_tokens=rounds.max_new_tokens,
        batch_size=base.evaluate.batch_size,
        seed=seed,
    )
    return run.model_copy(
        update={
            "name": f"{base.name}-rounds-{backbone.name}-s{seed}-lr{learning_rate:g}",
            "hallucinate": base.hallucinate.model_copy(update={"backend": "target", "target": target}),
            "iterate": IterateConfig(rounds=rounds.rounds, train_from="previous", splits=["train"]),
            "train": train.model_copy(update=update),
        }
    )
