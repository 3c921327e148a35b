"""What ``models.dpo`` assumes about TRL's DPOTrainer internals (trl 1.16), checked where used.

The weighted trainer leans on TRL internals no public API promises: the vision collator's
batch layout and which of its processor calls carries the images, two fused forwards per loss
(policy with gradients, then the reference without), the fused head's ``label_mask`` and
``log_sum_sq_probs``, and how TRL's WPO multiplier turns the latter into a per-pair factor. A
TRL release that changes one of them must stop training at its first step with a message
naming the assumption, not train something else quietly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F


class TRLContractError(RuntimeError):
    """TRL no longer behaves as models.dpo assumes; pin trl or adapt models/dpo.py."""


def check_image_call(passed: Sequence[Sequence[Any]], chosen: Sequence[Sequence[Any]]) -> None:
    """The vision collator's one processor call with images gets each example's image list for the
    chosen half and again for the rejected half - the places ``ImagePairCollator`` fills with
    each side's own images."""
    expected = [*chosen, *chosen]
    if len(passed) != len(expected) or any(
        len(got) != len(want) or any(a is not b for a, b in zip(got, want)) for got, want in zip(passed, expected)
    ):
        raise TRLContractError(
            "vision collator: the processor no longer gets each example's images for the chosen half, then the "
            "rejected half"
        )


def check_pair_layout(batch: Mapping[str, torch.Tensor], pairs: int, same_prompt: Sequence[bool]) -> None:
    """The vision collator's batch: ``[chosen_0..chosen_B-1, rejected_0..rejected_B-1]``, a pair's
    two rows with the same prompt tokens where ``same_prompt`` says so (both sides' images of one
    size: as many image tokens)."""
    ids, attention, completion = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    if ids.shape[0] != 2 * pairs or completion.shape != ids.shape:
        raise TRLContractError(
            f"vision collator: expected {2 * pairs} rows (chosen then rejected) with a completion_mask of their "
            f"shape, got input_ids {tuple(ids.shape)} and completion_mask {tuple(completion.shape)}"
        )
    prompt = (attention == 1) & (completion == 0)
    for i in (i for i in range(pairs) if same_prompt[i]):
        if not torch.equal(ids[i][prompt[i]], ids[pairs + i][prompt[pairs + i]]):
            raise TRLContractError(f"vision collator: rows {i} and {pairs + i} do not share a prompt")


def check_fused_output(output: Any, completion_mask: torch.Tensor, needs_wpo: bool) -> None:
    """A fused-head forward's per-token fields: ``log_probs``, ``label_mask`` (exactly the
    completion tokens, next-token aligned) and, when TRL's own WPO factor is asked for,
    ``log_sum_sq_probs`` - all of one shape."""
    for name in ("log_probs", "label_mask", *(("log_sum_sq_probs",) if needs_wpo else ())):
        value = getattr(output, name, None)
        if value is None or value.shape != output.log_probs.shape:
            raise TRLContractError(f"fused LM head: {name} is missing or not shaped like log_probs")
    seq_len = completion_mask.shape[1] - 1
    if not torch.equal(output.label_mask[:, -seq_len:], completion_mask[:, 1:].bool()):
        raise TRLContractError("fused LM head: label_mask is no longer the (shifted) completion_mask")


def check_forwards(grad_enabled: Sequence[bool], precomputed_reference: bool, training: bool) -> None:
    """One policy forward (with gradients in training) then one reference forward (without),
    or the policy alone when TRL precomputed the reference log-probs."""
    expected = 1 if precomputed_reference else 2
    if len(grad_enabled) != expected:
        raise TRLContractError(f"DPO loss: expected {expected} fused forwards per batch, saw {len(grad_enabled)}")
    if training and (not grad_enabled[0] or any(grad_enabled[1:])):
        raise TRLContractError("DPO loss: the first fused forward is no longer the policy's (with gradients)")


def check_weighting(
    loss: torch.Tensor, chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor, weights: torch.Tensor
) -> None:
    """TRL's sigmoid loss, its WPO multiplier fed our shifted log_sum_sq_probs, equals
    ``mean_i w_i * -log sigmoid(chosen reward_i - rejected reward_i)``: the weights took effect."""
    expected = (weights * -F.logsigmoid(chosen_rewards - rejected_rewards)).mean()
    if not torch.allclose(loss.detach().float(), expected.detach().float(), rtol=1e-2, atol=1e-4):
        raise TRLContractError(
            f"DPO loss {loss.item():.6g} is not the weighted sigmoid loss {expected.item():.6g}: TRL's WPO "
            "multiplier no longer applies the pair weights"
        )


def score_labelled_positions_only() -> None:
    """Have TRL's fused LM head project only the positions that carry a label, on a CPU too.

    TRL's ``add_fused_lm_head`` scores just the labelled positions where its Triton kernels run
    (CUDA, XPU) and every position elsewhere, to spare compilers that recompile per shape. On a
    CPU nothing recompiles, and projecting every prompt token through the vocabulary (49k rows
    for SmolLM2) costs as much as the decoder layers; the answers' few positions are all the
    loss needs. The decision is ``trl.trainer.utils._use_triton``: it is widened to the CPU
    (the kernel module keeps its own copy, so the CPU still runs the PyTorch tiles). Idempotent.
    """
    import trl.trainer.utils as trl_utils

    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None or "compact = _use_triton(" not in _source(trl_utils.add_fused_lm_head):
        raise TRLContractError("fused LM head: trl.trainer.utils no longer decides compaction with _use_triton")
    if getattr(decide, "compacts_on_cpu", False):
        return

    def compact(device: torch.device) -> bool:
        return device.type == "cpu" or decide(device)

    compact.compacts_on_cpu = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact


def _source(function: Any) -> str:
    import inspect

    return inspect.getsource(function)
