"""A LLaVA on pretrained SmolLM2, truncated: its language model keeps exactly the pretrained weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from models.compose import build_llava_on_lm
from tasks.smollm2 import ensure

SMOLLM2 = Path(__file__).resolve().parents[2] / "data" / "models" / "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def composed(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    ensure(SMOLLM2)
    out = build_llava_on_lm(SMOLLM2, tmp_path_factory.mktemp("composed"), layers=2, image_size=32, patch_size=16)
    lm = AutoModelForCausalLM.from_pretrained(SMOLLM2, dtype=torch.float32, local_files_only=True)
    return out, lm


def test_the_first_layers_norm_and_embeddings_are_the_pretrained_ones(composed):
    from models import vlm

    out, lm = composed
    loaded = vlm.load(out, device="cpu")
    language = loaded.model.model.language_model
    assert len(language.layers) == 2 and loaded.model.config.text_config.num_hidden_layers == 2
    for index in range(2):
        mine, theirs = language.layers[index].state_dict(), lm.model.layers[index].state_dict()
        assert all(torch.equal(mine[name], theirs[name]) for name in theirs)
    assert torch.equal(language.norm.weight, lm.model.norm.weight)
    pretrained = lm.model.embed_tokens.weight
    embeddings = language.embed_tokens.weight
    # One token added (<image>), its row the mean of the pretrained rows; the head stays tied.
    assert embeddings.shape[0] == pretrained.shape[0] + 1
    assert torch.equal(embeddings[:-1], pretrained)
    assert torch.allclose(embeddings[-1], pretrained.mean(dim=0), atol=1e-6)
    assert loaded.model.lm_head.weight.data_ptr() == embeddings.data_ptr()


def test_the_prompt_is_chatml_with_the_image_tokens_and_no_system_turn(composed):
    from models import vlm

    out, _ = composed
    loaded = vlm.load(out, device="cpu")
    text = loaded.processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Is there a mass?"}]}],
        add_generation_prompt=True,
    )
    assert text == "<|im_start|>user\n<image>Is there a mass?<|im_end|>\n<|im_start|>assistant\n"
    assert loaded.processor.tokenizer.pad_token == "<|endoftext|>"


def test_more_layers_than_the_model_has_is_refused(tmp_path):
    ensure(SMOLLM2)
    with pytest.raises(ValueError, match="between 1 and the model's 30 layers"):
        build_llava_on_lm(SMOLLM2, tmp_path, layers=31)
