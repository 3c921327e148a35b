"""Where a VLM looks when it gives an answer: attention rollout from the answer's tokens to the
image's tokens, upsampled onto the image - a lesion map from the model being aligned itself.

Method: attention rollout (Abnar & Zuidema, "Quantifying Attention Flow in Transformers", ACL
2020) over the language model's layers, each layer's attention averaged over heads, mixed half
and half with the identity for the residual path and row-normalized; the product of the layers
gives every position's relevance to every earlier one. The rows of the answer's tokens (the
ground truth, teacher-forced), averaged, read at the image tokens, form a grid on the image the
model saw (after ``Family.prepare``: LLaVA's padded square), mapped back onto the original
pixels. Families whose image tokens form a square grid (LLaVA, Gemma 3) or carry
``image_grid_thw`` (Qwen2-VL / 2.5-VL) are mapped; tiled layouts (LLaVA-NeXT, Idefics3) give None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from models import families, vlm


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
    raise ValueError(f"{type(model).__name__}: its config names no image token")


@torch.no_grad()
def relevance_maps(
    model: vlm.VLM, questions: Sequence[str], answers: Sequence[str], images: Sequence[str | Path]
) -> list[np.ndarray | None]:
    """Per (question, answer, image): a float map of the image's size (H, W), higher where the
    answer attends; None when the family's image tokens form no grid this module can place."""
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    collator = DataCollatorForVisionLanguageModeling(
        families.TemplateProcessor(model.processor), completion_only_loss=True
    )
    originals = [vlm.open_image(image) for image in images]
    rows = [
        {
            "prompt": [{"role": "user", "content": question}],
            "completion": [{"role": "assistant", "content": answer}],
            "images": [model.family.prepare(image, model.processor)],
        }
        for question, answer, image in zip(questions, answers, originals)
    ]
    batch = families.to_model(collator(rows), model.model)
    labels = batch.pop("labels")
    attentions = model.model(**batch, output_attentions=True).attentions
    token = image_token_id(model.model)
    grids = batch.get("image_grid_thw")
    merge = getattr(getattr(model.processor, "image_processor", None), "merge_size", 1)
    maps: list[np.ndarray | None] = []
    for b, image in enumerate(originals):
        keep = batch["attention_mask"][b].bool()
        rollout = attention_rollout([layer[b][:, keep][:, :, keep].float() for layer in attentions])
        is_image = batch["input_ids"][b][keep] == token
        is_answer = labels[b][keep] != -100
        if not is_image.any() or not is_answer.any():
            maps.append(None)
            continue
        relevance = rollout[is_answer][:, is_image].mean(dim=0).cpu().numpy()
        shape = grid_shape(len(relevance), None if grids is None else grids[b].tolist(), merge)
        if shape is None:
            maps.append(None)
            continue
        padded = model.family.image_preparation == "pad"
        maps.append(onto_image(relevance[: shape[0] * shape[1]].reshape(shape), image.size, padded))
    return maps


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
    (a padded square: the original sits centred in it)."""
    width, height = size
    side = max(width, height) if padded else None
    target = (side, side) if side else (width, height)
    full = np.asarray(Image.fromarray(grid.astype(np.float32), mode="F").resize(target, Image.BILINEAR))
    if not side:
        return full
    left, top = (side - width) // 2, (side - height) // 2
    return full[top : top + height, left : left + width]
