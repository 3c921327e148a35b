"""Tiny Idefics3 (SmolVLM)."""

from __future__ import annotations

from pathlib import Path

from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    Idefics3VisionConfig,
    LlamaConfig,
)

from models.tiny.common import TEXT, TOWER, save, text_ids
from models.tiny.text import IDEFICS3_TEMPLATE, IMAGE, Specials, family_tokenizer


def build_idefics3(out: Path, extra_texts: list[str], tile: int = 32, longest: int = 64, patch: int = 8) -> Path:
    """Idefics3 / SmolVLM: an image is resized to ``longest`` px and cut into ``tile`` px tiles plus a
    global view; a pixel-shuffle connector (the projector); a Llama decoder at model.text_model."""
    grid = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = Specials(
        tokens=("<pad>", "<|begin_of_text|>", "<|end_of_text|>", "<unk>", "<fake_token_around_image>", IMAGE,
                "<end_of_utterance>", "<global-img>", *grid),
        bos="<|begin_of_text|>",
        eos="<|end_of_text|>",
        add_bos=True,
    )  # fmt: skip
    tokenizer = family_tokenizer(extra_texts, specials, IDEFICS3_TEMPLATE)
    scale = 2  # pixel shuffle: 2x2 patches -> one token
    config = Idefics3Config(
        vision_config=Idefics3VisionConfig(**TOWER, image_size=tile, patch_size=patch),
        text_config=LlamaConfig(**TEXT, **text_ids(tokenizer), tie_word_embeddings=False),
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        scale_factor=scale,
        pad_token_id=tokenizer.pad_token_id,
    )
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": longest}, max_image_size={"longest_edge": tile}, do_image_splitting=True
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(tile // patch) ** 2 // scale**2,
        chat_template=IDEFICS3_TEMPLATE,
    )
    return save(Idefics3ForConditionalGeneration(config), processor, out, ["<|end_of_text|>", "<end_of_utterance>"])
