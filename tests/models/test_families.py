"""The family table against the real model classes: detection, LoRA targets, projector, prompts, sft parts."""

import json
import re
from pathlib import Path

import pytest
import torch

from models import families, vlm
from models.pairs import ImagePairCollator, preference_example
from models.sft import set_trainable
from tests.support.preference import mixed_size_rows

OLD_DEFAULT_TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


def test_every_family_is_detected_from_its_config_and_loads_its_class(loaded_family: vlm.VLM, family: str):
    assert families.detect(loaded_family.path).name == family
    assert loaded_family.family.name == family
    assert type(loaded_family.model).__name__ == families.FAMILIES[family].architecture
    assert families.family_of(loaded_family.model) is loaded_family.family


def test_an_unsupported_family_fails_before_loading_naming_the_supported_ones(tmp_path: Path):
    # The original LLaVA-Med v1.5 release, not converted to the transformers format.
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_mistral"}))
    with pytest.raises(ValueError, match="'llava_mistral' is not a supported VLM family") as error:
        vlm.load(tmp_path, device="cpu")
    message = str(error.value)
    assert all(f"{f.name} ({f.architecture})" in message for f in families.FAMILIES.values())


def test_lora_targets_every_language_model_linear_and_nothing_else(loaded_family: vlm.VLM):
    family, model = loaded_family.family, loaded_family.model
    names = [name for name, _ in model.named_modules()]
    hits = [name for name in names if re.fullmatch(family.lora_target, name)]
    layers = model.config.get_text_config().num_hidden_layers
    assert len(hits) == 7 * layers  # q, k, v, o, gate, up, down in every decoder layer
    assert all(name.startswith(family.language_model + ".") for name in hits)
    assert all(isinstance(model.get_submodule(name), torch.nn.Linear) for name in hits)
    # The vision tower has q/v projections too: the regex must not reach them.
    assert any(name.startswith(family.vision_tower) and name.endswith("q_proj") for name in names) or (
        family.name.startswith("qwen")  # Qwen's tower fuses qkv
    )
    projector = model.get_submodule(family.projector)
    assert [n for n in names if n.endswith(family.projector_leaf)] == [family.projector]
    assert sum(p.numel() for p in projector.parameters()) > 0


def test_the_old_default_target_missed_idefics3(tiny_checkpoint):
    model = vlm.load(tiny_checkpoint("idefics3"), device="cpu").model
    assert not [name for name, _ in model.named_modules() if re.fullmatch(OLD_DEFAULT_TARGET, name)]


def test_evaluation_prompts_carry_bos_once_and_match_training(loaded_family: vlm.VLM, tmp_path: Path):
    """Defect 3: Gemma 3's evaluation prompts started with two BOS (template and tokenizer), and TRL's
    collator dropped the only one of LLaVA-NeXT's; generation and training now see the same tokens."""
    processor, tokenizer = loaded_family.processor, loaded_family.tokenizer
    row = mixed_size_rows(tmp_path)[0]
    image = vlm.open_image(row["chosen_image"])
    generation = families.encode(processor, [vlm.prompt(processor, row["prompt"])], [image])["input_ids"][0]
    example = preference_example(**{k: row[k] for k in ("prompt", "chosen", "rejected", "weight", "pair_type")},
                                 chosen_image=row["chosen_image"], rejected_image=row["rejected_image"])  # fmt: skip
    batch = ImagePairCollator(processor)([example])
    training = batch["input_ids"][0][(batch["completion_mask"][0] == 0) & (batch["attention_mask"][0] == 1)]
    assert training.tolist() == generation.tolist()
    bos = tokenizer.bos_token_id
    if bos is not None:  # Qwen has none
        assert generation.tolist().count(bos) == 1 and generation[0] == bos


def test_sft_parts_follow_the_family_and_keep_the_projector_apart(tiny_checkpoint, family: str):
    model = vlm.load(tiny_checkpoint(family), device="cpu").model
    spec = families.family_of(model)
    parts = {name: spec.part_of(name) for name, _ in model.named_parameters()}
    assert None not in parts.values()
    assert {part for part in parts.values()} == {"vision_tower", "projector", "language_model"}
    set_trainable(model, ["vision_tower", "language_model"])
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {name for name, part in parts.items() if part != "projector"}
    # Qwen's merger lies inside model.visual: unfreezing the tower must not unfreeze the projector.
    assert not any(spec.is_projector(name) for name in trainable)
