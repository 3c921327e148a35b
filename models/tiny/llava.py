"""Tiny LLaVA (LLaVA-Med v1.5's architecture: the demo's model, with its own options) and LLaVA-NeXT."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessor,
    LlavaNextProcessor,
    LlavaProcessor,
    MistralConfig,
    SiglipImageProcessor,
    SiglipVisionConfig,
)

from models import loading
from models.tiny.common import TEXT, TOWER, save, text_ids
from models.tiny.text import (
    CHAT_TEMPLATE,
    EOS,
    IMAGE,
    MEDICAL_CORPUS,
    NO_BOS_TEMPLATE,
    Specials,
    family_tokenizer,
    train_tokenizer,
)


def build_tiny_llava(
    out: str | Path,
    seed: int = 0,
    text_model: Literal["mistral", "llama"] = "mistral",
    image_size: int = 32,
    patch_size: int = 8,
    hidden_size: int = 64,
    layers: int = 2,
    extra_texts: Sequence[str] = (),
    vision: Literal["clip", "siglip"] = "clip",
) -> Path:
    """Write a LLaVA checkpoint (model, tokenizer, processor) to ``out``; returns the folder.

    ``extra_texts`` joins the tokenizer's training corpus (e.g. the demo's answers), so it
    splits them into words the way a real medical model's tokenizer would. ``vision`` picks
    the tower: CLIP (LLaVA-1.5's) or SigLIP (LLaVA-OneVision's). A random-weight tower that
    must *learn* to see from scratch needs SigLIP: CLIP's pre-layernorm normalizes every
    patch embedding, which erases a patch's absolute brightness (a uniform bright patch and
    a uniform dark one become the same vector), so small intensity lesions are nearly
    invisible to an untrained CLIP tower.
    """
    out = Path(out)
    tokenizer = train_tokenizer([*MEDICAL_CORPUS, *extra_texts])
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE)
    num_patches = (image_size // patch_size) ** 2

    tower = dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    # CLIP has a CLS token that "default" drops (one image token per patch, as in LLaVA-1.5); SigLIP has none.
    strategy = "default" if vision == "clip" else "full"
    vision_config = CLIPVisionConfig(**tower, projection_dim=32) if vision == "clip" else SiglipVisionConfig(**tower)
    text_kwargs = dict(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    text = MistralConfig(**text_kwargs) if text_model == "mistral" else LlamaConfig(**text_kwargs)
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_select_strategy=strategy,
        vision_feature_layer=-2,
        image_seq_length=num_patches,
    )
    model = loading.build(LlavaForConditionalGeneration, config, seed).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    if vision == "clip":
        image_processor = CLIPImageProcessor(
            size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
        )
    else:
        image_processor = SiglipImageProcessor(size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=strategy,
        num_additional_image_tokens=1 if vision == "clip" else 0,
        chat_template=CHAT_TEMPLATE,
        image_token=IMAGE,
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def build_llava_next(out: Path, extra_texts: list[str], tile: int = 32, patch: int = 8) -> Path:
    """llava-v1.6-mistral: anyres tiling (image tokens depend on the image's size); no BOS in the
    template, the tokenizer adds it."""
    tokenizer = family_tokenizer(extra_texts, Specials(add_bos=True), NO_BOS_TEMPLATE)
    pinpoints = [[tile, 2 * tile], [2 * tile, tile], [2 * tile, 2 * tile]]
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**TOWER, image_size=tile, patch_size=patch, projection_dim=32),
        text_config=MistralConfig(**TEXT, **text_ids(tokenizer), tie_word_embeddings=False),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        image_grid_pinpoints=pinpoints,
        image_seq_length=(tile // patch) ** 2,
    )
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": tile}, crop_size={"height": tile, "width": tile}, image_grid_pinpoints=pinpoints
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=NO_BOS_TEMPLATE,
        image_token=IMAGE,
    )
    return save(LlavaNextForConditionalGeneration(config), processor, out, [EOS])
