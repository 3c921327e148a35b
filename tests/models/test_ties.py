"""A head that loading left untied from the embedding is tied again; an untied model is left alone."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from models.ties import retie


def tiny(tied: bool) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
        tie_word_embeddings=tied,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def test_a_declared_tie_that_loading_lost_is_restored():
    model = tiny(tied=True)
    assert retie(model) == []  # tied at construction: nothing to do
    model.lm_head.weight = torch.nn.Parameter(torch.randn(16, 8))  # what the bad load leaves
    assert retie(model) == ["lm_head.weight"]
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert retie(model) == []


def test_a_model_whose_config_unties_the_head_keeps_its_own_head():
    model = tiny(tied=False)
    head = model.lm_head.weight
    assert retie(model) == [] and model.lm_head.weight is head and head is not model.model.embed_tokens.weight
