"""Trainer settings that silently differed from the paper, and the TRL internals the trainer leans on."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from trl import DPOConfig, DPOTrainer

from models import vlm
from models.dpo import dpo_arguments, make_trainer
from models.pairs import ImagePairCollator
from models.trl_checks import (
    TRLContractError,
    check_forwards,
    check_fused_output,
    check_image_call,
    check_pair_layout,
)
from tasks.config import TrainConfig
from tests.models.test_dpo import examples, lora_grads
from tests.models.test_dpo import make_trainer as make_test_trainer
from tests.support.preference import preference_rows

ACCELERATE = Path(__file__).resolve().parents[2] / "models" / "accelerate"


def processes(config: str) -> int:
    return int(yaml.safe_load((ACCELERATE / config).read_text())["num_processes"])


def test_zero3_config_trains_the_papers_global_batch_of_4(tmp_path: Path):
    assert processes("zero3.yaml") == 4  # the paper's 4 GPUs
    settings = TrainConfig()
    args = dpo_arguments(settings, str(tmp_path), processes=processes("zero3.yaml"))
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (1, 1)
    assert processes("zero3.yaml") * args.per_device_train_batch_size * args.gradient_accumulation_steps == 4
    # One GPU accumulates to the same 4 pairs a step; DDP's 2 processes too.
    assert dpo_arguments(settings, str(tmp_path)).gradient_accumulation_steps == 4
    assert settings.accumulation_steps(processes("ddp.yaml")) == 2
    with pytest.raises(ValueError, match="not a multiple of 16 processes"):
        settings.accumulation_steps(processes("multinode.yaml"))
    assert TrainConfig(gradient_accumulation=3).accumulation_steps(4) == 3  # given explicitly, it wins


def production_trainer(tiny_llava: Path, tmp_path: Path, **settings) -> object:
    config = TrainConfig(lora_r=4, lora_alpha=8, projector_lr=None, max_length=None, **settings)
    loaded = vlm.load(tiny_llava, device="cpu")
    args = dpo_arguments(config, str(tmp_path / "out"))
    return make_trainer(config, args, loaded.model, None, loaded.processor, preference_rows(tmp_path / "img")[:2])


def dropouts(model: torch.nn.Module) -> dict[str, float]:
    return {name: module.p for name, module in model.named_modules() if isinstance(module, torch.nn.Dropout)}


def test_lora_dropout_reaches_the_model(tiny_llava: Path, tmp_path: Path):
    trainer = production_trainer(tiny_llava, tmp_path, lora_dropout=0.05)
    ps = dropouts(trainer.model)
    adapters = {name: p for name, p in ps.items() if ".lora_dropout." in name}
    assert len(adapters) >= 4 and set(adapters.values()) == {0.05}
    assert all(p == 0.0 for name, p in ps.items() if name not in adapters)  # base model: none
    # What TRL's default (disable_dropout=True) does to the same adapters: p = 0, the bug this fixes.
    loaded = vlm.load(tiny_llava, device="cpu")
    plain = DPOTrainer(
        model=loaded.model,
        args=DPOConfig(output_dir=str(tmp_path / "plain"), use_cpu=True, report_to=[], max_length=None),
        train_dataset=trainer.train_dataset,
        processing_class=loaded.processor,
        data_collator=ImagePairCollator(loaded.processor),
        peft_config=trainer.model.peft_config["default"],
    )
    assert {p for name, p in dropouts(plain.model).items() if ".lora_dropout." in name} == {0.0}


def test_dropout_trains_the_adapters_and_leaves_the_reference_deterministic(tiny_llava: Path, tmp_path: Path):
    trainer = production_trainer(tiny_llava, tmp_path, lora_dropout=0.5, lora_target=r".*\.(q_proj|v_proj)")
    model = trainer.model
    # Adapters start at zero (B = 0); give them weight so their dropout shows in the output.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    batch = trainer.data_collator(examples(preference_rows(tmp_path / "img")[:2]))
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        policy = [model(**inputs).logits for _ in range(2)]
        with model.disable_adapter():
            reference = [model(**inputs).logits for _ in range(2)]
    assert not torch.equal(policy[0], policy[1])  # dropout is live in the adapters
    assert torch.equal(reference[0], reference[1])  # and nowhere the reference runs


def test_zero_weight_pairs_give_no_gradient_and_no_nan(tiny_llava: Path, tmp_path: Path):
    rows = preference_rows(tmp_path / "img", [0.0, 0.0, 0.0, 1.0])[:4]
    trainer = make_test_trainer(tiny_llava, tmp_path / "out", rows)
    trainer.model.train()
    loss = trainer.compute_loss(trainer.model, trainer.data_collator(examples(rows[:3])))
    assert torch.isfinite(loss) and loss.item() == 0.0
    zero = lora_grads(trainer, rows[:3])
    assert all(torch.isfinite(g).all() and float(g.abs().max()) == 0.0 for g in zero)
    mixed = lora_grads(trainer, rows)
    assert all(torch.isfinite(g).all() for g in mixed) and any(float(g.abs().max()) > 0 for g in mixed)


def test_a_trl_that_stops_applying_the_weights_fails_loudly(tiny_llava: Path, tmp_path: Path):
    rows = preference_rows(tmp_path / "img", [1.25, 0.5, 0.75, 1.0])[:4]
    trainer = make_test_trainer(tiny_llava, tmp_path / "out", rows)
    batch = trainer.data_collator(examples(rows))
    trainer.model.eval()
    with torch.no_grad():
        trainer.compute_loss(trainer.model, batch)  # the weighted loss passes its own check
        trainer.use_weighting = False  # as if TRL dropped its per-pair multiplier
        with pytest.raises(TRLContractError, match="no longer applies the pair weights"):
            trainer.compute_loss(trainer.model, batch)


def test_collator_layout_is_checked(tiny_llava: Path, tmp_path: Path):
    rows = preference_rows(tmp_path / "img")[:4]
    collator = ImagePairCollator(vlm.load(tiny_llava, device="cpu").processor)
    batch = collator.torch_call([dict(e, rejected_image=e["image"]) for e in examples(rows)])
    same = [True] * 4
    check_pair_layout(batch, 4, same)
    with pytest.raises(TRLContractError, match="expected 6 rows"):
        check_pair_layout(batch, 3, same[:3])
    # Rows 4 and 6 are the rejected rows of pairs 0 and 2, two different questions.
    swapped = dict(batch, input_ids=batch["input_ids"][[0, 1, 2, 3, 6, 5, 4, 7]])
    with pytest.raises(TRLContractError, match="do not share a prompt"):
        check_pair_layout(swapped, 4, same)
    check_pair_layout(swapped, 4, [False, True, False, True])  # a noised image of another size: other prompt tokens
    # The processor call with images must get each example's images, chosen half then rejected half.
    chosen = [[object()] for _ in range(3)]
    check_image_call([*chosen, *chosen], chosen)
    with pytest.raises(TRLContractError, match="no longer gets each example's images"):
        check_image_call([*chosen, *chosen[::-1]], chosen)
    with pytest.raises(TRLContractError, match="no longer gets each example's images"):
        check_image_call(chosen, chosen)


def test_fused_output_and_forward_checks():
    completion = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 0]])
    good = SimpleNamespace(
        log_probs=torch.zeros(2, 3), label_mask=completion[:, 1:].bool(), log_sum_sq_probs=torch.zeros(2, 3)
    )
    check_fused_output(good, completion, needs_wpo=True)
    with pytest.raises(TRLContractError, match="label_mask is no longer"):
        check_fused_output(
            SimpleNamespace(**{**vars(good), "label_mask": torch.ones(2, 3, dtype=bool)}), completion, False
        )
    with pytest.raises(TRLContractError, match="log_sum_sq_probs is missing"):
        check_fused_output(SimpleNamespace(**{**vars(good), "log_sum_sq_probs": None}), completion, True)
    check_forwards([True, False], precomputed_reference=False, training=True)
    check_forwards([True], precomputed_reference=True, training=True)
    with pytest.raises(TRLContractError, match="expected 2 fused forwards"):
        check_forwards([True], precomputed_reference=False, training=True)
    with pytest.raises(TRLContractError, match="no longer the policy"):
        check_forwards([False, True], precomputed_reference=False, training=True)
