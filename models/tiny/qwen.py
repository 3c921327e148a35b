"""Tiny Qwen2-VL and Qwen2.5-VL (Lingshu, HuatuoGPT-Vision)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import transformers as tf

from models.tiny.common import TEXT, save, text_ids
from models.tiny.text import QWEN_TEMPLATE, Specials, family_tokenizer

QWEN = Specials(
    tokens=("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
            "<|video_pad|>"),
    bos=None,
    eos="<|im_end|>",
    pad="<|endoftext|>",
    unk=None,
    named={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"},
)  # fmt: skip


def build_qwen(out: Path, extra_texts: list[str], version: Literal["2", "2.5"]) -> Path:
    """Qwen2-VL / Qwen2.5-VL: native-resolution ViT (14 px patches, 2x2 merged: one token per 28x28
    px, images resized to 28..84 px a side), M-RoPE; the merger (projector) is inside the tower."""
    tokenizer = family_tokenizer(extra_texts, QWEN, QWEN_TEMPLATE)
    ids = {**text_ids(tokenizer), "bos_token_id": tokenizer.pad_token_id}
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}  # x2 = the 16-dim head
    patches = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)  # the real models' values
    if version == "2":
        text = tf.Qwen2VLTextConfig(**TEXT, **ids, rope_parameters=rope)
        vision = tf.Qwen2VLVisionConfig(depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2, **patches)
        classes = tf.Qwen2VLConfig, tf.Qwen2VLForConditionalGeneration, tf.Qwen2VLProcessor
    else:
        text = tf.Qwen2_5_VLTextConfig(**TEXT, **ids, rope_parameters=rope)
        vision = tf.Qwen2_5_VLVisionConfig(
            depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, window_size=56,
            fullatt_block_indexes=[1], **patches,
        )  # fmt: skip
        classes = tf.Qwen2_5_VLConfig, tf.Qwen2_5_VLForConditionalGeneration, tf.Qwen2_5_VLProcessor
    config_class, model_class, processor_class = classes
    token = tokenizer.convert_tokens_to_ids
    config = config_class(
        text_config=text,
        vision_config=vision,
        image_token_id=token("<|image_pad|>"),
        video_token_id=token("<|video_pad|>"),
        vision_start_token_id=token("<|vision_start|>"),
        vision_end_token_id=token("<|vision_end|>"),
        tie_word_embeddings=False,
    )
    size = {"shortest_edge": 28 * 28, "longest_edge": 84 * 84}
    processor = processor_class(
        image_processor=tf.Qwen2VLImageProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2),
        video_processor=tf.Qwen2VLVideoProcessor(size=size, patch_size=14, merge_size=2, temporal_patch_size=2),
        tokenizer=tokenizer,
        chat_template=QWEN_TEMPLATE,
    )
    return save(model_class(config), processor, out, ["<|im_end|>", "<|endoftext|>"])
