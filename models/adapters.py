"""Continuing a saved LoRA adapter under DPO (`mmedpo iterate`, round r from round r - 1's adapter).

The adapter is loaded trainable on the base model (peft), projector copy included. Given a model
that already holds an adapter, TRL adds a frozen copy of it (adapter ``ref``) and uses that as
the DPO reference - the previous round's model. MMedPO's objective (method.md, stage 6) measures
the policy against the starting model, so the copy is dropped and TRL's reference forward runs
with the adapters disabled: the base model, exactly as when a new adapter is trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def adapter_to_train(model: Any, adapter: str | Path | None, new: Any) -> tuple[Any, Any]:
    """(model, peft config) for the trainer: ``model`` and the ``new`` adapter's config, or, to
    continue ``adapter``, the model wrapped with it (and its projector copy), trainable, and None."""
    if adapter is None:
        return model, new
    from peft import PeftModel

    return PeftModel.from_pretrained(model, str(adapter), is_trainable=True), None


def base_model_reference(model: Any) -> None:
    """Drop TRL's frozen copy of a continued adapter, so the reference is the base model."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")
    adapters = list(model.peft_config)
    if adapters != ["default"] or model.active_adapter != "default":
        raise RuntimeError(f"continuing an adapter: expected only the 'default' adapter active, have {adapters}")
