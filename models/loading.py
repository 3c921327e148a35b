"""Loading and building transformers models from several threads at once.

``from_pretrained`` and a model's constructor switch behaviour off by patching class and module
attributes for their duration - ``PreTrainedModel.tie_weights`` becomes a no-op, torch's init
functions are swapped - and put back what they found on exit. Two threads doing it at once
(Prefect runs stages and shards on threads) can interleave so that the second puts back the
first one's patch: from then on no model in the process ties its head to its embedding, and a
pretrained SmolLM2 loads with a fresh random head (``lm_head.weight | MISSING``). So every load
and build of ours holds one process-wide lock, seeds included (the global RNG is shared too),
and a load restores any declared tie it finds missing (a load elsewhere, outside the lock, can
still have left the patch behind).
"""

from __future__ import annotations

import logging
import threading
from typing import Any, TypeVar

import torch

log = logging.getLogger(__name__)

LOCK = threading.RLock()  # re-entrant: a builder may load or build inside another
Model = TypeVar("Model", bound=torch.nn.Module)


def from_pretrained(auto_class: Any, *args: Any, **kwargs: Any) -> Any:
    """``auto_class.from_pretrained(*args, **kwargs)`` under the lock, its declared ties checked."""
    with LOCK:
        model = auto_class.from_pretrained(*args, **kwargs)
    retie(model)
    return model


def build(model_class: type[Model], config: Any, seed: int) -> Model:
    """``model_class(config)`` with its random weights drawn from ``seed``, under the lock."""
    with LOCK:
        torch.manual_seed(seed)
        return model_class(config)


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
