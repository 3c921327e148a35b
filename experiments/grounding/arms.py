"""The grounding experiment's arms: one shared curation config, each arm changing one thing.

A0 ``sft`` trains nothing after SFT; A1 ``text`` trains on text pairs only (the set is repeated to
fill the steps); A2 ``local`` adds the visual pairs whose rejected image has the lesion noised (the
paper); A3 ``sham`` adds visual pairs with a region of the same size noised over the distractor; A4
``global`` adds visual pairs with the whole image noised. Every arm starts from the same SFT
checkpoint of its seed and trains the same steps, pairs a step and learning rate; every pair weighs 1.

The sham's region reaches the product through its own public input: the sham arm ingests
``sham.jsonl`` (data.py), the same images, questions and ids with the distractor-centred box as the
sample's annotated box, and the annotation localizer (the default) makes it the region.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from experiments.grounding.config import BackboneConfig, ExperimentConfig
from experiments.grounding.data import SFT, SHAM
from tasks.config import (
    AssembleConfig,
    EvaluateConfig,
    HallucinateConfig,
    IngestConfig,
    NoiseConfig,
    RunConfig,
    SourceConfig,
)

LABELS = {
    "sft": "A0 SFT only",
    "text": "A1 text pairs",
    "local": "A2 text + local visual pairs",
    "sham": "A3 text + sham visual pairs",
    "global": "A4 text + global noise",
}
# The arm whose ingest (grounding.jsonl, with val and test twins) every model is evaluated and measured on.
REFERENCE_ARM = "local"
TRAINED = ("text", "local", "sham", "global")


def base_run_config(config: ExperimentConfig, source: Path) -> RunConfig:
    """The curation every arm shares. Noise runs in the SigLIP towers' own space (mean = std = 0.5:
    ``unit``, what ``auto`` resolves to for them) - one curation for every seed's checkpoint."""
    return RunConfig(
        name=config.name,
        store=config.store,
        sets=config.sets,
        ingest=IngestConfig(sources=[SourceConfig(format="jsonl", root=source, name="grounding")]),
        hallucinate=HallucinateConfig(splits=["train"]),
        noise=NoiseConfig(space="unit"),
        score=config.score,
        # Train and test crops come from the same few background images: the near-duplicate check would
        # drop most of the training set as leakage.
        assemble=AssembleConfig(near_duplicate_bits=None),
        evaluate=EvaluateConfig(
            meteor=False, max_new_tokens=4, batch_size=config.measure.batch_size, examples=4, splits=["test"]
        ),
    )


def arm_config(config: ExperimentConfig, source: Path, arm: str) -> RunConfig:
    """The arm's curation; ``source``: grounding.jsonl (the sham arm reads sham.jsonl beside it)."""
    base = base_run_config(config, source)
    update: dict[str, Any]
    if arm in ("sft", REFERENCE_ARM):
        update = {}
    elif arm == "text":
        update = {"assemble": base.assemble.model_copy(update={"visual_pairs": False})}
    elif arm == "sham":
        sham = SourceConfig(format="jsonl", root=source.with_name(SHAM), name="grounding")
        update = {"ingest": IngestConfig(sources=[sham])}
    elif arm == "global":
        update = {"noise": base.noise.model_copy(update={"mode": "global"})}
    else:
        raise ValueError(f"unknown arm {arm!r}")
    return base.model_copy(update={**update, "name": f"{config.name}-{arm}"})


def sft_ingest(source: Path) -> IngestConfig:
    """The SFT's samples: sft.jsonl beside ``source`` (grounding.jsonl), a source of its own name."""
    return IngestConfig(sources=[SourceConfig(format="jsonl", root=source.with_name(SFT), name="grounding-sft")])


def train_settings(
    run: RunConfig, backbone: BackboneConfig, seed: int, checkpoint: Path, learning_rate: float
) -> RunConfig:
    """``run`` (an arm's curation) trained and evaluated from the SFT checkpoint ``checkpoint``."""
    train = backbone.train.model_copy(
        update={"model": checkpoint, "seed": seed, "learning_rate": learning_rate, "projector_lr": learning_rate}
    )
    return run.model_copy(
        update={
            "name": f"{run.name}-{backbone.name}-s{seed}-lr{learning_rate:g}",
            "train": train,
            "evaluate": run.evaluate.model_copy(update={"model": checkpoint}),
        }
    )
