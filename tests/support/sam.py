"""A small random-weight Sam from segment_anything's own classes (64 px input, 2 ViT blocks)."""

from __future__ import annotations

from pathlib import Path

import torch

from models.sam import build_custom_sam
from tasks.config import SamArchitecture, SamConfig

TINY_SAM = SamArchitecture(
    image_size=64,
    patch_size=16,
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=[1],
    window_size=2,
    prompt_embed_dim=32,
    decoder_depth=1,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    iou_head_hidden_dim=32,
)


def tiny_sam(seed: int = 0):
    torch.manual_seed(seed)
    return build_custom_sam(**TINY_SAM.model_dump())


def tiny_sam_checkpoint(path: Path, seed: int = 0) -> SamConfig:
    """Save a tiny Sam's state dict and return the config that loads it."""
    torch.save(tiny_sam(seed).state_dict(), path)
    return SamConfig(model_type="custom", checkpoint=path, architecture=TINY_SAM, batch_size=2)
