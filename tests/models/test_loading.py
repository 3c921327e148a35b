"""Loads under the process-wide lock come back with their declared ties, even where another
thread's load left transformers' tie_weights patched to a no-op (the race models/loading.py
describes); a model whose config unties the head keeps its own."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from models import loading


def tiny(tied: bool) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=16, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1,
        tie_word_embeddings=tied,
    )  # fmt: skip
    return loading.build(LlamaForCausalLM, config, seed=0)


def test_a_load_after_the_race_left_tying_off_still_ties_the_head(tmp_path, monkeypatch):
    tiny(tied=True).save_pretrained(tmp_path)  # the head is not stored: it is the embedding
    monkeypatch.setattr(PreTrainedModel, "tie_weights", lambda *args, **kwargs: None)  # what the race leaves

    bare = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert bare.lm_head.weight is not bare.model.embed_tokens.weight  # transformers alone: a random head
    model = loading.from_pretrained(AutoModelForCausalLM, tmp_path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert loading.retie(model) == []


def test_retie_restores_a_lost_tie_and_leaves_an_untied_model_alone():
    model = tiny(tied=True)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(16, 8))
    assert loading.retie(model) == ["lm_head.weight"] and model.lm_head.weight is model.model.embed_tokens.weight
    untied = tiny(tied=False)
    head = untied.lm_head.weight
    assert loading.retie(untied) == [] and untied.lm_head.weight is head


def test_build_draws_the_same_weights_from_the_same_seed():
    first, second = tiny(tied=False), tiny(tied=False)
    assert torch.equal(first.lm_head.weight, second.lm_head.weight)
