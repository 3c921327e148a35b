"""Where a VLM looks when it gives an answer: the relevance of the image's tokens to the answer,
upsampled onto the image - a lesion map from the model being aligned itself.

Two published methods over the language model's layers (``method``):
- ``rollout``: attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers",
  ACL 2020): each layer's attention averaged over heads, mixed half and half with the identity for
  the residual path and row-normalized; the product of the layers.
- ``gradient``: gradient-weighted relevance (Chefer, Gur & Wolf, "Generic Attention-model
  Explainability for Interpreting Bi-Modal and Encoder-Decoder Transformers", ICCV 2021): each
  layer's attention weighted by its gradient of the answer's log-likelihood, positive part averaged
  over heads, accumulated as R <- R + A R from R = I.

With ``through_tower`` (LLaVA) the image tokens' relevance is carried on to the tower's patches by
the vision tower's own rollout (its layers up to ``vision_feature_layer``): a tower with global
attention can move a lesion's content into other patches' tokens.

The relevance is read at the positions that *predict* the answer's tokens (teacher-forced ground
truth: the token before each answer token, where the model decides it), averaged, at the image
tokens. Those form a grid on the image the model saw (after ``Family.prepare``: LLaVA's padded
square) that is mapped back onto the original pixels. Tiled families map one view
(``Family.attention_view``): LLaVA-NeXT's base view (the whole image resized to one tile, its
tokens first) and Idefics3's global view (the whole image resized to one tile, its tokens last).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models import vlm

METHODS = ("rollout", "gradient")


class Unsupported(Exception):
    """What was asked of this model cannot be done for any sample (not a ValueError: a localizer
    that fails one bad image at a time must not mistake it for one)."""


def load(path: str | Path, device: str = "cpu") -> vlm.VLM:
    """The model with eager attention (the fused kernels return no attention weights)."""
    loaded = vlm.load(path, device=device)
    loaded.model.set_attn_implementation("eager")
    return loaded


def image_token_id(model: Any) -> int:
    config = model.config
    for name in ("image_token_id", "image_token_index"):
        value = getattr(config, name, None)
        if value is not None:
            return int(value)
    raise Unsupported(f"{type(model).__name__}: its config names no image token")


def relevance_maps(
    model: vlm.VLM,
    questions: Sequence[str],
    answers: Sequence[str],
    images: Sequence[str | Path],
    method: str = "rollout",
    through_tower: bool = False,
) -> list[np.ndarray | None]:
    """Per (question, answer, image): a float map of the image's size (H, W), higher where the
    answer's relevance went; None when the family's image tokens form no grid this module can place.

    ``through_tower`` (LLaVA family): the image tokens' relevance carried on to the tower's patches
    by the vision tower's own attention rollout, so a token that gathered the lesion from another
    patch points at that patch."""
    if method not in METHODS:
        raise Unsupported(f"attention method {method!r}: expected one of {', '.join(METHODS)}")
    if through_tower and model.family.name != "llava":
        raise Unsupported(f"through_tower: only the llava family's tower is rolled out, not {model.family.name}'s")
    originals = [vlm.open_image(image) for image in images]
    batch = vlm.teacher_forced(model, questions, answers, originals)
    labels = batch.pop("labels")
    layers = (gradient_weighted if method == "gradient" else plain_attention)(model.model, batch, labels)
    towers = tower_rollout(model.model, batch["pixel_values"]) if through_tower else None
    token = image_token_id(model.model)
    grids = batch.get("image_grid_thw")
    merge = getattr(getattr(model.processor, "image_processor", None), "merge_size", 1)
    maps: list[np.ndarray | None] = []
    for b, image in enumerate(originals):
        keep = batch["attention_mask"][b].bool()
        is_image = batch["input_ids"][b][keep] == token
        deciding = predicting(labels[b][keep] != -100)
        if not is_image.any() or not deciding.any():
            maps.append(None)
            continue
        per_layer = [layer[b][:, keep][:, :, keep].float() for layer in layers]
        relevance = (gradient_rollout if method == "gradient" else attention_rollout)(per_layer)
        scores = relevance[deciding][:, is_image].mean(dim=0)
        scores = (scores if towers is None else scores @ towers[b]).cpu().numpy()
        grid = view_grid(model, scores, None if grids is None else grids[b].tolist(), merge)
        padded = model.family.image_preparation == "pad"
        maps.append(None if grid is None else onto_image(grid, image.size, padded))
    return maps


def predicting(is_answer: torch.Tensor) -> torch.Tensor:
    """The positions whose next token is an answer token: where the model produces the answer."""
    deciding = torch.zeros_like(is_answer)
    deciding[:-1] = is_answer[1:]
    return deciding


@torch.no_grad()
def plain_attention(model: Any, batch: dict[str, Any], labels: torch.Tensor) -> list[torch.Tensor]:
    """Per layer (B, heads, S, S) attention."""
    return list(model(**batch, output_attentions=True).attentions)


def gradient_weighted(model: Any, batch: dict[str, Any], labels: torch.Tensor) -> list[torch.Tensor]:
    """Per layer (B, heads, S, S) grad(A) * A, the gradient of the answer's summed log-likelihood
    (teacher-forced) with respect to the attention weights; samples do not mix, so one backward
    serves the batch."""
    with torch.enable_grad():
        output = model(**batch, output_attentions=True)
        attentions = list(output.attentions)
        logits = output.logits[:, :-1].float()
        targets = labels[:, 1:]
        answer = targets != -100
        picked = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        gradients = torch.autograd.grad((picked * answer).sum(), attentions)
    return [(gradient * attention).detach() for gradient, attention in zip(gradients, attentions)]


@torch.no_grad()
def tower_rollout(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """(B, image tokens, patches): the LLaVA vision tower's attention rollout over the layers its
    image features come from (``vision_feature_layer``), its CLS token dropped as the features drop it."""
    config = model.config
    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise Unsupported(f"through_tower: vision_feature_layer {layer!r} is not one layer")
    tower = model.model.vision_tower
    attentions = tower(pixel_values.to(tower.dtype), output_attentions=True).attentions
    used = attentions[: len(attentions) + 1 + layer if layer < 0 else layer]
    if not used:
        raise Unsupported(f"through_tower: vision_feature_layer {layer} uses no attention layer")
    first = 1 if config.vision_feature_select_strategy == "default" else 0
    return torch.stack(
        [attention_rollout([a[b].float() for a in used])[first:, first:] for b in range(len(pixel_values))]
    )


def attention_rollout(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """(S, S) relevance from per-layer (heads, S, S) attention: prod_l norm(0.5 mean_h(A_l) + 0.5 I)."""
    size = layers[0].shape[-1]
    eye = torch.eye(size, dtype=torch.float32, device=layers[0].device)
    rollout = eye
    for attention in layers:
        mixed = 0.5 * attention.mean(dim=0) + 0.5 * eye
        mixed = mixed / mixed.sum(dim=-1, keepdim=True)
        rollout = mixed @ rollout
    return rollout


def gradient_rollout(layers: Sequence[torch.Tensor]) -> torch.Tensor:
    """(S, S) relevance from per-layer (heads, S, S) grad(A) * A: R = I, then R <- R + mean_h(.)^+ R
    layer by layer (Chefer et al. 2021, eq. 6-7)."""
    size = layers[0].shape[-1]
    relevance = torch.eye(size, dtype=torch.float32, device=layers[0].device)
    for weighted in layers:
        relevance = relevance + weighted.clamp(min=0).mean(dim=0) @ relevance
    return relevance


def view_grid(model: vlm.VLM, scores: np.ndarray, grid_thw: list[int] | None, merge: int) -> np.ndarray | None:
    """The image tokens' scores as the (rows, cols) grid of the view the map is made from: every
    image token (a square, or Qwen's merged patch grid), or the base / global view of a tiled image."""
    view = model.family.attention_view
    if view == "all":
        shape = grid_shape(len(scores), grid_thw, merge)
        return None if shape is None else scores[: shape[0] * shape[1]].reshape(shape)
    side = view_side(model.model.config)
    if side * side > len(scores):
        return None
    chosen = scores[: side * side] if view == "first" else scores[len(scores) - side * side :]
    return chosen.reshape(side, side)


def view_side(config: Any) -> int:
    """Tokens per side of one tile: the tower's patches per side, after Idefics3's pixel shuffle."""
    vision = config.vision_config
    return vision.image_size // vision.patch_size // int(getattr(config, "scale_factor", 1) or 1)


def grid_shape(tokens: int, grid_thw: list[int] | None, merge: int) -> tuple[int, int] | None:
    """(rows, cols) of the image tokens: Qwen's merged patch grid, else a square."""
    if grid_thw is not None:
        _, rows, cols = grid_thw
        rows, cols = rows // merge, cols // merge
        return (rows, cols) if rows * cols <= tokens else None
    side = math.isqrt(tokens)
    return (side, side) if side * side == tokens else None


def onto_image(grid: np.ndarray, size: tuple[int, int], padded: bool) -> np.ndarray:
    """The token grid resized onto the image the model saw and cut back to the original's pixels
    (a padded square: the original sits centred in it; a tile view: the whole image stretched)."""
    width, height = size
    side = max(width, height) if padded else None
    target = (side, side) if side else (width, height)
    full = np.asarray(Image.fromarray(grid.astype(np.float32), mode="F").resize(target, Image.BILINEAR))
    if not side:
        return full
    left, top = (side - width) // 2, (side - height) // 2
    return full[top : top + height, left : left + width]
