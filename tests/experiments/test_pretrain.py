"""The tower's pretraining: only the tower changes, its labels are the lesion's cell, and the SFT starts from it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from experiments.grounding.config import GroundingDataConfig, PretrainConfig, smollm2_backbone
from experiments.grounding.data import load_backgrounds
from experiments.grounding.pretrain import (
    TowerPretraining,
    model_dir,
    pretrain,
    quadrant_of,
    seed_sft,
    views,
)
from models import vlm
from models.compose import build_llava_on_lm
from tasks.smollm2 import ensure
from tasks.store import ArtifactStore

SMOLLM2 = Path(__file__).resolve().parents[2] / "data" / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def backbone():
    ensure(SMOLLM2)
    found = smollm2_backbone(layers=1)
    sft = found.sft.model_copy(update={"text_model": SMOLLM2})
    return found.model_copy(update={"sft": sft, "pretrain": PretrainConfig(views=1040, steps=20, batch_size=16)})


def test_quadrants_follow_the_4_by_4_grid():
    cells = torch.tensor([0, 1, 2, 3, 4, 6, 9, 11, 12, 15])
    assert quadrant_of(cells, 4).tolist() == [0, 0, 1, 1, 0, 1, 2, 3, 2, 3]


def test_each_views_label_is_the_cell_of_its_lesions_centre(tmp_path, backbone):
    composed = build_llava_on_lm(SMOLLM2, tmp_path / "base", layers=1, image_size=16, patch_size=4)
    loaded = vlm.load(composed, device="cpu")
    config = TowerPretraining(sft=backbone.sft, data=GroundingDataConfig(), pretrain=PretrainConfig(views=1001), seed=3)
    pixels, cells = views(loaded, config, 4, load_backgrounds(tmp_path / "backgrounds"))
    assert pixels.shape == (1001, 3, 16, 16)
    # Both halves about equally (no side prior), and every cell row and column is reached.
    columns = (cells % 4).numpy()
    assert 0.4 < np.mean(columns < 2) < 0.6
    assert set(np.unique(columns)) == {0, 1, 2, 3} and set(np.unique((cells // 4).numpy())) == {0, 1, 2, 3}


def test_only_the_tower_learns_and_the_sft_starts_from_it(tmp_path, backbone):
    store = ArtifactStore(tmp_path / "store")
    sft = backbone.sft.model_copy(update={"seed": 5, "tiny_seed": 5})
    config = TowerPretraining(sft=sft, data=GroundingDataConfig(), pretrain=backbone.pretrain, seed=5)
    built = pretrain(store, config)
    assert built.counts["views"] == 1040 and 0 <= built.counts["held_out.cell_accuracy"] <= 1
    composed = build_llava_on_lm(SMOLLM2, tmp_path / "base", layers=1, seed=5, image_size=16, patch_size=4)
    before = vlm.load(composed, device="cpu").model.state_dict()
    after = vlm.load(model_dir(built), device="cpu").model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all("vision_tower" in name for name in changed)
    assert pretrain(store, config).key == built.key  # the store keeps it: a second seed's run reuses nothing else

    sft, start = seed_sft(str(tmp_path / "store"), backbone, GroundingDataConfig(), 5)
    assert start is not None and start.key == built.key and sft.model == model_dir(built) and sft.seed == 5
    assert sft.text_model is None and type(sft).model_validate(sft.model_dump()) == sft  # one start, not two
    plain, none = seed_sft(
        str(tmp_path / "store"), backbone.model_copy(update={"pretrain": None}), GroundingDataConfig(), 5
    )
    assert none is None and plain.model is None and plain.tiny_seed == 5
