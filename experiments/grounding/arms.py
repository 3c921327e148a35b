"""The grounding experiment's arms: one shared curation config, each arm changing one section.

``sft`` trains nothing after SFT; ``dpo_text`` has text pairs only (plain DPO on
hallucinated answers); ``mmedpo`` adds the lesion-noised visual pairs, weighted by the
judged score; ``mmedpo_global`` noises the whole image instead of the lesion;
``mmedpo_unweighted`` gives every pair weight 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.grounding.config import ExperimentConfig
from tasks.config import (
    AssembleConfig,
    EvaluateConfig,
    HallucinateConfig,
    IngestConfig,
    NormalizerConfig,
    RunConfig,
    SourceConfig,
)

LABELS = {
    "sft": "SFT only",
    "dpo_text": "SFT + DPO (text pairs)",
    "mmedpo": "SFT + MMedPO",
    "mmedpo_global": "SFT + MMedPO, global noise",
    "mmedpo_unweighted": "SFT + MMedPO, no weights",
}
# The arm whose curated set (text + local visual pairs) holds the held-out pairs every arm's margins are measured on.
REFERENCE_ARM = "mmedpo"


def base_run_config(config: ExperimentConfig, source: Path) -> RunConfig:
    """The curation every arm shares; the arms change one section each."""
    return RunConfig(
        name=config.name,
        store=config.store,
        sets=config.sets,
        ingest=IngestConfig(sources=[SourceConfig(format="jsonl", root=source, name="grounding")]),
        # val needs rejections too: its pairs are the held-out margins.
        hallucinate=HallucinateConfig(splits=["train", "val"]),
        # Train and test crops come from the same few background images: the near-duplicate
        # check would drop most of the training set as leakage.
        assemble=AssembleConfig(near_duplicate_bits=None),
        train=config.train,
        evaluate=EvaluateConfig(meteor=False, max_new_tokens=4, batch_size=config.measure.batch_size, examples=4),
    )


def arm_config(base: RunConfig, arm: str) -> RunConfig:
    if arm in ("sft", REFERENCE_ARM):
        update: dict[str, Any] = {}
    elif arm == "dpo_text":
        update = {"assemble": base.assemble.model_copy(update={"visual_pairs": False})}
    elif arm == "mmedpo_global":
        update = {"noise": base.noise.model_copy(update={"mode": "global"})}
    elif arm == "mmedpo_unweighted":
        update = {
            "score": base.score.model_copy(update={"normalizer": NormalizerConfig(kind="paper", anchor=1.0, gain=0.0)})
        }
    else:
        raise ValueError(f"unknown arm {arm!r}")
    return base.model_copy(update={**update, "name": f"{base.name}-{arm.replace('_', '-')}"})
