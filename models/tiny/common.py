"""What the tiny families share: one size (a 64-wide, 2-layer decoder; a 32-wide, 2-layer tower)
and how a checkpoint is finished and saved."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from transformers import PreTrainedTokenizerFast

TEXT = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=1024,
)
TOWER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)


def text_ids(tokenizer: PreTrainedTokenizerFast) -> dict[str, Any]:
    return dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def save(model: Any, processor: Any, out: Path, stop: Sequence[str]) -> Path:
    """Generation stops at every end-of-turn token the family uses; both halves are saved."""
    tokenizer = processor.tokenizer
    generation = model.generation_config
    generation.pad_token_id = tokenizer.pad_token_id
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.convert_tokens_to_ids(list(stop))
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out
