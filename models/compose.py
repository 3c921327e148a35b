"""A LLaVA whose language model is a pretrained causal LM: the LM's weights, a new small vision tower.

LLaVA's own recipe - a pretrained LLM, a vision encoder and a projector between them, the
projector (and here the tower too) trained first - at a size a CPU can train: any local
Llama- or Mistral-architecture causal LM folder (SmolLM2-135M-Instruct from ``mmedpo models
smollm2``, say) becomes the ``language_model`` of a ``LlavaForConditionalGeneration`` with a
random SigLIP tower and projector (the tiny models' tower; the sft stage trains them).

``layers`` keeps only the first N decoder layers: the embeddings, those layers, the final norm
and the head, all with their pretrained weights (a CPU run that cannot afford the whole depth;
``None`` keeps every layer). The tokenizer is the LM's with one added ``<image>`` token (its
embedding the mean of the others), and the chat template is ChatML over the processor's content
lists, without the default system turn SmolLM2's template would add (short sequences): a user
turn renders as ``<|im_start|>user\\n<image>question<|im_end|>\\n``. The pad token is the LM's
``<|endoftext|>`` when it has one, so padding never looks like the end of an answer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    SiglipImageProcessor,
    SiglipVisionConfig,
)

from models import loading

IMAGE = "<image>"
SUPPORTED = ("llama", "mistral")
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['content'] is string %}{% set parts = [{'type': 'text', 'text': message['content']}] %}"
    "{% else %}{% set parts = message['content'] %}{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% for part in parts %}{% if part['type'] == 'image' %}<image>{% endif %}{% endfor %}"
    "{% for part in parts %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_llava_on_lm(
    text_model: str | Path,
    out: str | Path,
    layers: int | None = None,
    seed: int = 0,
    image_size: int = 32,
    patch_size: int = 8,
    vision_hidden: int = 32,
    vision_layers: int = 2,
    dtype: Literal["float32", "bfloat16"] = "float32",
) -> Path:
    """Write the composed LLaVA (model, tokenizer, processor) to ``out``; returns the folder.

    Deterministic: the same LM folder and arguments give the same weights.
    """
    text_model, out = Path(text_model), Path(out)
    torch_dtype = getattr(torch, dtype)
    lm = loading.from_pretrained(AutoModelForCausalLM, text_model, dtype=torch_dtype, local_files_only=True)
    if lm.config.model_type not in SUPPORTED:
        raise ValueError(f"{text_model}: a {lm.config.model_type} model; supported: {', '.join(SUPPORTED)}")
    total = lm.config.num_hidden_layers
    if layers is not None:
        if not 1 <= layers <= total:
            raise ValueError(f"layers: {layers} is not between 1 and the model's {total} layers")
        truncate(lm, layers)
    tokenizer = chatml_tokenizer(text_model)
    state = lm_state(lm, len(tokenizer))
    text_config = lm.config
    text_config.vocab_size = len(tokenizer)
    text_config.pad_token_id = tokenizer.pad_token_id
    vision = SiglipVisionConfig(
        hidden_size=vision_hidden,
        intermediate_size=2 * vision_hidden,
        num_hidden_layers=vision_layers,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_select_strategy="full",  # SigLIP has no CLS token to drop
        vision_feature_layer=-1,
        image_seq_length=(image_size // patch_size) ** 2,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    model = loading.build(LlavaForConditionalGeneration, config, seed).to(torch_dtype)
    model.model.language_model.load_state_dict(state["model"], strict=True)
    if "lm_head" in state:
        model.lm_head.weight.data.copy_(state["lm_head"])
    model.tie_weights()
    on_meta = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if on_meta:
        raise RuntimeError(f"composed model: weights never materialized: {on_meta[:5]}")
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    processor = LlavaProcessor(
        image_processor=SiglipImageProcessor(size={"height": image_size, "width": image_size}),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="full",
        num_additional_image_tokens=0,
        chat_template=CHATML_TEMPLATE,
        image_token=IMAGE,
    )
    model.eval().save_pretrained(out)
    processor.save_pretrained(out)
    return out


def lm_state(lm: torch.nn.Module, vocab: int) -> dict[str, Any]:
    """The LM's decoder weights (``model``) and, untied, its head (``lm_head``), with rows added up
    to ``vocab``, each the mean of the pretrained rows (a new token starts where an average
    token is, not at a random point the head would score wildly).

    By hand rather than ``resize_token_embeddings``: in a long-running process (after other
    models were loaded and trained in the same process) that call met the tied head on the meta
    device and failed; the tied head is not needed (it is the embedding), and a weight left on
    the meta device is an error here, never a silent random start.
    """

    def grown(weight: torch.Tensor) -> torch.Tensor:
        weight = weight.detach()
        if weight.is_meta:
            raise RuntimeError("language model: a weight was never loaded (meta device)")
        extra = vocab - weight.shape[0]
        return torch.cat([weight, weight.mean(dim=0, keepdim=True).expand(extra, -1)]) if extra > 0 else weight

    model = dict(lm.model.state_dict())
    model["embed_tokens.weight"] = grown(model["embed_tokens.weight"])
    state: dict[str, Any] = {"model": model}
    if not lm.config.tie_word_embeddings:
        state["lm_head"] = grown(lm.lm_head.weight)
    return state


def truncate(lm: torch.nn.Module, layers: int) -> None:
    """Keep the first ``layers`` decoder layers (and everything around them), in place."""
    lm.model.layers = lm.model.layers[:layers]
    lm.config.num_hidden_layers = layers
    if getattr(lm.config, "layer_types", None) is not None:
        lm.config.layer_types = lm.config.layer_types[:layers]


def chatml_tokenizer(text_model: Path):
    tokenizer = AutoTokenizer.from_pretrained(text_model, local_files_only=True)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE]})
    if "<|endoftext|>" in tokenizer.get_vocab():
        tokenizer.pad_token = "<|endoftext|>"
    elif tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer
