"""Tied weights that loading left untied, tied again.

A checkpoint of a model whose head shares the embedding matrix (SmolLM2 and most small LMs:
``tie_word_embeddings``) stores only the embedding; ``from_pretrained`` is meant to point the
head at it. In a process that has already trained other models (the test suite, the grounding
experiment), transformers 5.x was seen to leave the head as a fresh random matrix instead,
reporting ``lm_head.weight | MISSING`` - a pretrained model with a random output layer, silently.
The cause inside transformers was not found; every load of ours passes through here, which
restores each tie the model's own config declares (``all_tied_weights_keys``).
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def retie(model: torch.nn.Module) -> list[str]:
    """Point every declared tied weight at its source again where it is a separate tensor;
    returns the names that were re-tied (empty when loading tied them, the usual case)."""
    declared = getattr(model, "all_tied_weights_keys", None) or {}
    fixed = []
    for target, source in declared.items():
        shared = model.get_parameter(source)
        if model.get_parameter(target) is shared:
            continue
        module_name, _, attribute = target.rpartition(".")
        setattr(model.get_submodule(module_name), attribute, shared)
        fixed.append(target)
    if fixed:
        log.warning("%s: loading left %s untied; tied again", type(model).__name__, fixed)
    return fixed
