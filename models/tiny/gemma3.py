"""Tiny Gemma 3 (MedGemma)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3ImageProcessor,
    Gemma3Processor,
    Gemma3TextConfig,
    SiglipVisionConfig,
)

from models.tiny.common import TEXT, TOWER, save, text_ids
from models.tiny.text import GEMMA3_TEMPLATE, Specials, family_tokenizer

GEMMA3 = Specials(
    tokens=("<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>",
            "<end_of_image>", "<image_soft_token>"),
    bos="<bos>",
    eos="<eos>",
    pad="<pad>",
    unk="<unk>",
    named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"},
    add_bos=True,
)  # fmt: skip


def build_gemma3(out: Path, extra_texts: list[str], size: int = 32, patch: int = 8, tokens: int = 4) -> Path:
    """Gemma 3: SigLIP tower average-pooled to ``tokens`` soft tokens per image, sliding and global
    attention layers, tied embeddings; a fixed image size (no pan-and-scan)."""
    tokenizer = family_tokenizer(extra_texts, GEMMA3, GEMMA3_TEMPLATE)
    token = tokenizer.convert_tokens_to_ids
    head = TEXT["hidden_size"] // TEXT["num_attention_heads"]
    text = Gemma3TextConfig(
        **TEXT, **text_ids(tokenizer), head_dim=head, query_pre_attn_scalar=head, sliding_window=16,
        layer_types=["sliding_attention", "full_attention"],
    )  # fmt: skip
    config = Gemma3Config(
        text_config=text,
        vision_config=SiglipVisionConfig(**TOWER, image_size=size, patch_size=patch, vision_use_head=False),
        mm_tokens_per_image=tokens,
        boi_token_index=token("<start_of_image>"),
        eoi_token_index=token("<end_of_image>"),
        image_token_index=token("<image_soft_token>"),
    )
    model = Gemma3ForConditionalGeneration(config)
    # Gemma 3's _init_weights zeros this projection: at random init every image token would be 0 (a blind model).
    with torch.no_grad():
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(0.0, TOWER["hidden_size"] ** -0.5)
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessor(size={"height": size, "width": size}),
        tokenizer=tokenizer,
        chat_template=GEMMA3_TEMPLATE,
        image_seq_length=tokens,
    )
    return save(model, processor, out, ["<eos>", "<end_of_turn>"])
