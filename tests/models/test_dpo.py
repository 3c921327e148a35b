from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import LoraConfig
from trl import DPOConfig, DPOTrainer

from models import vlm
from models.dpo import WeightedDPOTrainer
from models.families import FAMILIES
from models.pairs import ImagePairCollator, preference_example
from tests.support.dpo_args import BETA, sgd_step_args
from tests.support.preference import preference_rows


def examples(rows: list[dict]) -> list[dict]:
    return [
        preference_example(
            r["prompt"], r["chosen"], r["rejected"], r["chosen_image"], r["rejected_image"], r["weight"], r["pair_type"]
        )
        for r in rows
    ]


def make_trainer(tiny_llava: Path, out: Path, rows: list[dict], trainer_class=WeightedDPOTrainer, **overrides):
    loaded = vlm.load(tiny_llava, device="cpu")
    args = sgd_step_args(
        out,
        batch_size=overrides.pop("batch_size", 4),
        accumulation=overrides.pop("accumulation", 1),
        **{k: overrides.pop(k) for k in list(overrides) if k in DPOConfig.__dataclass_fields__},
    )
    # Random (non-zero) adapters so the policy differs from the adapters-off reference from the start.
    peft = LoraConfig(
        r=4,
        lora_alpha=8,
        lora_dropout=0.0,
        # The language model's linears only: a bare ["q_proj", "v_proj"] also adapts the vision tower.
        target_modules=FAMILIES["llava"].lora_target,
        init_lora_weights=False,
        modules_to_save=overrides.pop("modules_to_save", None),
    )
    extra = {"data_collator": ImagePairCollator(loaded.processor)}
    return trainer_class(
        model=loaded.model,
        args=args,
        train_dataset=Dataset.from_list(examples(rows)),
        processing_class=loaded.processor,
        peft_config=peft,
        **extra,
        **overrides,
    )


def summed_logps(model, batch) -> torch.Tensor:
    """Per-row completion log-probs from the model's ordinary logits (no TRL code)."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "attention_mask", "pixel_values")}
    logits = model(**inputs).logits[:, :-1].float()
    labels = batch["input_ids"][:, 1:]
    mask = batch["completion_mask"][:, 1:].bool()
    token_logps = torch.gather(F.log_softmax(logits, dim=-1), 2, labels.unsqueeze(-1)).squeeze(-1)
    return (token_logps * mask).sum(dim=1)


def test_loss_is_the_hand_computed_weighted_dpo_loss(tiny_llava: Path, tmp_path: Path):
    weights = [1.25, 0.5, 0.9, 0.0, 1.1, 0.75]
    rows = preference_rows(tmp_path / "img", weights)[:6]
    trainer = make_trainer(tiny_llava, tmp_path / "out", rows)
    batch = trainer.data_collator(examples(rows))
    model = trainer.model
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, batch)
        policy = summed_logps(model, batch)
        with model.disable_adapter():
            reference = summed_logps(model, batch)
    chosen, rejected = (policy - reference).chunk(2)
    per_pair = -F.logsigmoid(BETA * (chosen - rejected))
    expected = (torch.tensor(weights) * per_pair).mean()
    assert not torch.allclose(policy, reference)  # the check must be able to see the weights
    assert loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert loss.item() != pytest.approx(per_pair.mean().item(), abs=1e-4)


def lora_grads(trainer, rows: list[dict]) -> list[torch.Tensor]:
    model = trainer.model
    model.train()
    model.zero_grad()
    trainer.compute_loss(model, trainer.data_collator(examples(rows))).backward()
    # Adapters on layers whose output the model never reads get no gradient at all.
    return [
        p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters() if p.requires_grad
    ]


def test_zero_weight_pair_gets_zero_gradient(tiny_llava: Path, tmp_path: Path):
    rows = preference_rows(tmp_path / "img", [1.0, 0.0])[:2]
    trainer = make_trainer(tiny_llava, tmp_path / "out", rows)
    alone_zero = lora_grads(trainer, rows[1:])
    alone_first = lora_grads(trainer, rows[:1])
    together = lora_grads(trainer, rows)
    assert all(float(g.abs().max()) == 0.0 for g in alone_zero)
    assert any(float(g.abs().max()) > 0.0 for g in alone_first)
    # The batch mean counts the zero-weight pair in N but adds nothing to the gradient.
    for batch_grad, first_grad in zip(together, alone_first):
        torch.testing.assert_close(batch_grad, first_grad / 2, rtol=1e-4, atol=1e-7)


def test_rejected_half_sees_the_noised_image_text_pairs_the_same(tiny_llava: Path, tmp_path: Path):
    rows = preference_rows(tmp_path / "img")[:4]  # text, visual, text, visual
    loaded = vlm.load(tiny_llava, device="cpu")
    collator = ImagePairCollator(loaded.processor)
    batch = collator(examples(rows))
    pixels, ids = batch["pixel_values"], batch["input_ids"]
    chosen_pixels, rejected_pixels = pixels.chunk(2)
    # Compare real tokens only: TRL pads with EOS where the tokenizer's pad id is 0.
    chosen_ids, rejected_ids = ids.masked_fill(batch["attention_mask"] == 0, -1).chunk(2)
    assert batch["pair_type"].tolist() == [0, 1, 0, 1]
    for i, row in enumerate(rows):
        if row["pair_type"] == "visual":
            assert not torch.equal(chosen_pixels[i], rejected_pixels[i])
            assert torch.equal(chosen_ids[i], rejected_ids[i])
            noised = loaded.processor.image_processor(
                images=[vlm.open_image(row["rejected_image"])], return_tensors="pt"
            )
            assert torch.allclose(rejected_pixels[i], noised["pixel_values"][0])
        else:
            assert torch.equal(chosen_pixels[i], rejected_pixels[i])
            assert not torch.equal(chosen_ids[i], rejected_ids[i])
        clean = loaded.processor.image_processor(images=[vlm.open_image(row["chosen_image"])], return_tensors="pt")
        assert torch.allclose(chosen_pixels[i], clean["pixel_values"][0])
    assert batch["weight"].tolist() == [1.0] * 4


@pytest.mark.slow
def test_gradient_accumulation_gives_the_same_step(tiny_llava: Path, tmp_path: Path):
    rows = preference_rows(tmp_path / "img", [1.25, 0.5, 0.9, 0.2])[:4]
    updates = []
    # One optimizer step over the same 4 pairs: 4 x 1, 2 x 2, and 3 + 1 (a short last micro-batch).
    for batch_size, accumulation in ((4, 1), (2, 2), (3, 2)):
        trainer = make_trainer(
            tiny_llava,
            tmp_path / f"out{batch_size}",
            rows,
            batch_size=batch_size,
            accumulation=accumulation,
            learning_rate=1.0,
        )
        before = torch.cat([p.detach().flatten() for p in trainer.model.parameters() if p.requires_grad])
        trainer.train()
        after = torch.cat([p.detach().flatten() for p in trainer.model.parameters() if p.requires_grad])
        assert trainer.state.global_step == 1
        updates.append(after - before)
    assert float(updates[0].norm()) > 0
    # The layouts agree to ~1e-6 (float32 summation order; the 0.3% seen before was bf16 autocast, TRL's
    # default, on the CPU); averaging per micro-batch instead (no rescaling by the step's pair count) is
    # 81% off on 3 + 1.
    for other in updates[1:]:
        assert float((other - updates[0]).norm() / updates[0].norm()) < 1e-5


def test_unit_weights_match_plain_trl(tiny_llava: Path, tmp_path: Path):
    rows = [r for r in preference_rows(tmp_path / "img") if r["pair_type"] == "text"]
    ours = make_trainer(tiny_llava, tmp_path / "a", rows)
    plain = make_trainer(tiny_llava, tmp_path / "b", rows, trainer_class=DPOTrainer)
    batch = ours.data_collator(examples(rows))
    plain_batch = {k: v for k, v in batch.items() if k not in ("weight", "pair_type")}
    with torch.no_grad():
        ours.model.eval(), plain.model.eval()
        assert ours.compute_loss(ours.model, batch).item() == pytest.approx(
            plain.compute_loss(plain.model, plain_batch).item(), abs=1e-6
        )


def test_batch_wide_loss_types_are_refused(tiny_llava: Path, tmp_path: Path):
    rows = preference_rows(tmp_path / "img")[:2]
    with pytest.raises(ValueError, match="per-pair weights"):
        make_trainer(tiny_llava, tmp_path / "out", rows, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0])


def test_projector_trains_at_its_own_learning_rate(tiny_llava: Path, tmp_path: Path):
    rows = preference_rows(tmp_path / "img")[:4]
    trainer = make_trainer(
        tiny_llava,
        tmp_path / "out",
        rows,
        learning_rate=1e-3,
        projector_lr=0.05,
        modules_to_save=["multi_modal_projector"],
    )
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    optimizer = trainer.create_optimizer()
    by_lr: dict[float, set[str]] = {}
    for group in optimizer.param_groups:
        by_lr.setdefault(group["lr"], set()).update(names[id(p)] for p in group["params"])
    assert set(by_lr) == {1e-3, 0.05}
    assert by_lr[0.05] and all("multi_modal_projector" in n for n in by_lr[0.05])
    assert by_lr[1e-3] and all("lora_" in n for n in by_lr[1e-3])
    projector = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n in by_lr[0.05]}
    frozen = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "embed_tokens" in n}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(after[n], v) for n, v in projector.items())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())
