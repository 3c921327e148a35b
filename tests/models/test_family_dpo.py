"""Per family: visual pairs see their noised image, the weighted loss is the hand-computed one, a LoRA
step moves only adapters and the projector; max_length never leaves a pair without answer tokens."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import families, vlm
from models.dpo import dpo_arguments, lora_config, make_trainer
from models.pairs import ImagePairCollator, preference_example
from tasks.config import TrainConfig
from tests.support.configs import small_train
from tests.support.preference import mixed_size_rows

BETA = 0.1
PAIR_KEYS = ("completion_mask", "weight", "pair_type")


def examples(rows: list[dict]) -> list[dict]:
    keys = ("prompt", "chosen", "rejected", "chosen_image", "rejected_image", "weight", "pair_type")
    return [preference_example(*(row[k] for k in keys)) for row in rows]


def per_image(batch: dict, images: int) -> list[torch.Tensor]:
    """Each image's pixel tensor: Qwen concatenates all images' patches, one grid row each."""
    if "image_grid_thw" in batch:
        return list(batch["pixel_values"].split(batch["image_grid_thw"].prod(dim=1).tolist()))
    assert len(batch["pixel_values"]) == images
    return list(batch["pixel_values"])


def row_logps(model, batch: dict) -> torch.Tensor:
    """Summed completion log-probs of every row, one plain forward of the batch with every processor key."""
    inputs = families.to_model({k: v for k, v in batch.items() if k not in PAIR_KEYS}, model)
    logits = model(**inputs).logits[:, :-1].float()
    tokens = torch.log_softmax(logits, dim=-1).gather(2, inputs["input_ids"][:, 1:, None]).squeeze(-1)
    return (tokens * batch["completion_mask"][:, 1:]).sum(dim=1)


def settings(**overrides) -> TrainConfig:
    values = dict(
        learning_rate=1e-2,
        projector_lr=5e-2,
        max_steps=1,
        warmup_ratio=0.0,
        scheduler="constant",
        save_steps=1000,
        beta=BETA,
    )
    return small_train(**{**values, **overrides})


def trainer_for(checkpoint: Path, out: Path, rows: list[dict], **overrides):
    """The product's trainer (family-derived LoRA target and projector) on ``rows``."""
    config = settings(**overrides)
    loaded = vlm.load(checkpoint, device="cpu")
    return make_trainer(config, dpo_arguments(config, str(out)), loaded.model, None, loaded.processor, rows)


def test_the_rejected_side_of_a_visual_pair_is_computed_on_the_noised_image(loaded_family, tmp_path):
    rows = mixed_size_rows(tmp_path)  # text, visual, text, visual, visual with a noised image of another size
    processor, pairs = loaded_family.processor, len(rows)
    # Both sides prepared as the family's generation and scoring prepare them (LLaVA: padded to square).
    batch = ImagePairCollator(processor, family=loaded_family.family)(examples(rows))
    images = per_image(batch, 2 * pairs)
    for index, row in enumerate(rows):
        chosen, rejected = images[index], images[pairs + index]
        noised = loaded_family.image(row["rejected_image"])
        alone = per_image(families.encode(processor, [vlm.prompt(processor, row["prompt"])], [noised]), 1)[0]
        if row["pair_type"] == "visual":
            assert not torch.equal(chosen, rejected)
            # LLaVA-NeXT and Idefics3 pad every image's tiles to the batch's most: compare the real ones.
            assert torch.equal(rejected[: len(alone)], alone)
        else:
            assert torch.equal(chosen, rejected)
    with torch.no_grad():
        logps = row_logps(loaded_family.model, batch)
    for index, row in enumerate(rows):
        chosen = vlm.answer_logprob(loaded_family, row["prompt"], row["chosen"], row["chosen_image"])
        rejected = vlm.answer_logprob(loaded_family, row["prompt"], row["rejected"], row["rejected_image"])
        assert float(logps[index]) == pytest.approx(chosen, abs=1e-4)
        assert float(logps[pairs + index]) == pytest.approx(rejected, abs=1e-4)


def test_the_weighted_loss_of_one_pair_is_the_hand_computed_one(family, tiny_checkpoint, tmp_path):
    row = mixed_size_rows(tmp_path)[3]  # a visual pair, weight 0.75
    trainer = trainer_for(tiny_checkpoint(family), tmp_path / "out", [row])
    model = trainer.model
    torch.manual_seed(0)
    with torch.no_grad():  # adapters away from zero, so the policy differs from the adapters-off reference
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0.0, 0.2)
    model.eval()
    with torch.no_grad():
        loss = trainer.compute_loss(model, trainer.data_collator(examples([row])))
    policy = vlm.VLM(model=model, processor=trainer.processing_class, path=Path("."), family=families.family_of(model))

    def logratio_sides() -> tuple[float, float]:
        chosen = vlm.answer_logprob(policy, row["prompt"], row["chosen"], row["chosen_image"])
        rejected = vlm.answer_logprob(policy, row["prompt"], row["rejected"], row["rejected_image"])
        return chosen, rejected

    chosen, rejected = logratio_sides()
    with model.disable_adapter():
        ref_chosen, ref_rejected = logratio_sides()
    margin = BETA * ((chosen - ref_chosen) - (rejected - ref_rejected))
    per_pair = -F.logsigmoid(torch.tensor(margin, dtype=torch.float64)).item()
    assert abs(chosen - ref_chosen) > 1e-3  # the check can see a wrong log-prob
    assert loss.item() == pytest.approx(row["weight"] * per_pair, abs=1e-5)
    assert loss.item() != pytest.approx(per_pair, abs=1e-3)


@pytest.mark.slow
def test_a_lora_step_moves_only_adapters_and_the_projector(family, tiny_checkpoint, tmp_path):
    rows = mixed_size_rows(tmp_path)[:2]  # a text and a visual pair
    trainer = trainer_for(tiny_checkpoint(family), tmp_path / "out", rows)
    spec = families.family_of(trainer.model)
    names = {id(p): name for name, p in trainer.model.named_parameters()}
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    moved = {name for name, p in trainer.model.named_parameters() if not torch.equal(before[name], p.detach())}
    lora = {name for name in moved if ".lora_" in name}
    projector = {name for name in moved if spec.is_projector(name) and "modules_to_save" in name}
    assert lora and projector and moved == lora | projector
    # Defect 1: the projector (Qwen's visual.merger, Idefics3's connector) trains, at its own learning rate.
    by_lr: dict[float, set[str]] = {}
    for group in trainer.optimizer.param_groups:
        by_lr.setdefault(group["initial_lr"], set()).update(names[id(p)] for p in group["params"])
    assert set(by_lr) == {1e-2, 5e-2}
    assert by_lr[5e-2] and all(spec.is_projector(name) for name in by_lr[5e-2])
    assert projector <= by_lr[5e-2] and lora <= by_lr[1e-2]


def test_a_max_length_that_leaves_no_answer_token_fails_before_training(tiny_checkpoint, tmp_path):
    checkpoint = tiny_checkpoint("llava_next")  # image tokens grow with the image
    rows = mixed_size_rows(tmp_path)
    loaded = vlm.load(checkpoint, device="cpu")
    batch = ImagePairCollator(loaded.processor)(examples(rows))
    longest = int((batch["attention_mask"].sum(dim=1) - batch["completion_mask"].sum(dim=1)).max())
    with pytest.raises(ValueError, match=f"1 of 5 pairs .* the longest is {longest}"):
        trainer_for(checkpoint, tmp_path / "out", rows, max_length=longest)
    trainer = trainer_for(checkpoint, tmp_path / "out", rows, max_length=longest + 1)
    assert trainer.data_collator(examples(rows))["completion_mask"].sum(dim=1).min() == 1
    # The collator refuses such a batch itself rather than train on it (TRL would truncate it silently).
    with pytest.raises(ValueError, match="keep no answer token under max_length=40"):
        ImagePairCollator(loaded.processor, max_length=40)(examples(rows))


def test_lora_target_and_projector_come_from_the_family_unless_a_regex_is_given():
    qwen = families.FAMILIES["qwen2_5_vl"]
    derived = lora_config(settings(), qwen)
    assert derived.target_modules == qwen.lora_target and derived.modules_to_save == ["visual.merger"]
    explicit = lora_config(settings(lora_target=r".*\.q_proj", projector_lr=None), qwen)
    assert explicit.target_modules == r".*\.q_proj" and explicit.modules_to_save is None
