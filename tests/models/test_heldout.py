"""What training moved on held-out pairs: TRL's DPO metrics before and after, through the
production trainer."""

from pathlib import Path

import pytest

from models import vlm
from models.dpo import HELDOUT_METRICS, dpo_arguments, heldout_metrics, make_trainer
from tasks.config import TrainConfig
from tests.support.preference import preference_rows


def test_heldout_metrics_start_at_zero_reward_and_move_with_training(tiny_llava: Path, tmp_path: Path):
    rows = preference_rows(tmp_path / "img")[:4]
    config = TrainConfig(
        lora_r=4, lora_alpha=8, projector_lr=None, max_length=None, learning_rate=0.05, max_steps=4, batch_size=2
    )
    loaded = vlm.load(tiny_llava, device="cpu")
    trainer = make_trainer(
        config, dpo_arguments(config, str(tmp_path / "out")), loaded.model, None, loaded.processor, rows, rows[:2]
    )
    before = heldout_metrics(trainer)
    assert tuple(before) == HELDOUT_METRICS
    # A fresh adapter is the reference: no reward, no margin, no pair preferred yet.
    assert before["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert before["rewards/accuracies"] == 0.0
    assert before["logps/chosen"] < 0
    trainer.train()
    after = heldout_metrics(trainer)
    # Trained on these pairs too (the test wants a certain effect): the chosen answers pull ahead.
    assert after["rewards/margins"] > 0.01
    assert after["rewards/accuracies"] > 0.0
    assert after["logps/chosen"] != pytest.approx(before["logps/chosen"], abs=1e-3)
