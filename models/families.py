"""What differs between the supported VLM families, and the conventions that make one code path fit all.

Six families load through ``AutoModelForImageTextToText`` + ``AutoProcessor`` (``FAMILIES``). What
differs is data: where the vision tower, the projector and the language model sit, hence which
modules LoRA adapts and which one trains at the projector's own learning rate. How they are
prompted and called is one set of conventions, checked on every family (tests/models/):

* images go to the processor as one list per prompt (``[[image] for image in images]``): Gemma 3
  refuses a flat list in a batch ("Found [1, 1] <start_of_image> tokens and [2] images");
* text is rendered with the chat template and tokenized with ``add_special_tokens=False`` (as TRL's
  collators do), and ``render`` puts BOS in front exactly once: Gemma 3 / Idefics3 templates carry
  BOS and their tokenizers add another, llava-v1.6-mistral's template carries none and relies on the
  tokenizer, which ``add_special_tokens=False`` then silences;
* every key the processor returns goes to the model: Qwen's ``image_grid_thw`` is refused without
  ``mm_token_type_ids``, Gemma 3 needs ``token_type_ids``, Idefics3 ``pixel_attention_mask``,
  LLaVA-NeXT ``image_sizes``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

# The decoder layers' attention and MLP projections: what the paper's LoRA adapts.
LM_LINEAR = r"\.layers\.\d+\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)"
PROJECTOR, LANGUAGE_MODEL = "model.multi_modal_projector", "model.language_model"


@dataclass(frozen=True)
class Family:
    """One family: its ``model_type`` (config.json), model class and module layout."""

    name: str
    architecture: str
    vision_tower: str
    projector: str
    language_model: str
    # Projector parameters outside its module (LLaVA-NeXT's row-end embedding): sft trains them with
    # it; peft's modules_to_save takes modules only, so DPO leaves them frozen.
    projector_params: tuple[str, ...] = ()
    # How an image is prepared before the processor (``prepare``): pad (LLaVA-Med's
    # image_aspect_ratio: pad) or as the processor takes it (its own resize / crop / tiling).
    image_preparation: str = "processor"
    # Which image tokens the attention localizer maps (models/attention.py): all of them as one grid,
    # or of a tiled image the view of the whole image that leads (first) or closes (last) its tokens.
    attention_view: str = "all"

    def prepare(self, image: Image.Image, processor: Any) -> Image.Image:
        """``image`` as this family's training saw it; every path that hands an image to the
        processor (generation, answer scoring, SFT, DPO pairs, the attention localizer) calls this.

        ``pad``: LLaVA's ``expand2square``: the image centred on a square of its longer side filled
        with the processor's mean colour (``int(255 * mean)``), so a centre-cropping CLIP processor
        keeps the borders of a non-square radiograph.
        """
        width, height = image.size
        if self.image_preparation != "pad" or width == height:
            return image
        mean = getattr(getattr(processor, "image_processor", processor), "image_mean", None) or (0.5, 0.5, 0.5)
        side = max(width, height)
        square = Image.new(image.mode, (side, side), tuple(int(255 * m) for m in mean))
        square.paste(image, ((side - width) // 2, (side - height) // 2))
        return square

    @property
    def lora_target(self) -> str:
        """peft regex (matched in full against module names) of the language model's linear layers.

        Never the vision tower: its attention layers share the names q_proj / v_proj.
        """
        return re.escape(self.language_model) + LM_LINEAR

    @property
    def projector_leaf(self) -> str:
        """The projector's name for peft's ``modules_to_save`` (matched by ``endswith``), which
        also finds it inside a PeftModel, whose names gain a ``base_model.model.`` prefix."""
        return self.projector.removeprefix("model.")

    def is_projector(self, parameter: str) -> bool:
        """Whether a ``named_parameters()`` name (plain or peft model) belongs to the projector."""
        return f"{self.projector_leaf}." in parameter

    def part_of(self, parameter: str) -> str | None:
        """``projector``, ``vision_tower`` or ``language_model`` for a parameter name of the plain
        model. The projector is asked first: Qwen's merger sits inside the vision tower."""
        if self.is_projector(parameter) or parameter in self.projector_params:
            return "projector"
        if parameter.startswith(f"{self.vision_tower}."):
            return "vision_tower"
        if parameter.startswith((f"{self.language_model}.", "lm_head.")):
            return "language_model"
        return None


FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        # LLaVA-Med v1.5 trained with image_aspect_ratio: pad. LLaVA-NeXT's anyres tiling keeps the
        # aspect ratio itself (it pads to the best grid), so it takes images as they are.
        Family(
            "llava",
            "LlavaForConditionalGeneration",
            "model.vision_tower",
            PROJECTOR,
            LANGUAGE_MODEL,
            image_preparation="pad",
        ),
        Family(
            "llava_next",
            "LlavaNextForConditionalGeneration",
            "model.vision_tower",
            PROJECTOR,
            LANGUAGE_MODEL,
            projector_params=("model.image_newline",),
            attention_view="first",
        ),
        Family("qwen2_vl", "Qwen2VLForConditionalGeneration", "model.visual", "model.visual.merger", LANGUAGE_MODEL),
        Family(
            "qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", "model.visual", "model.visual.merger", LANGUAGE_MODEL
        ),
        Family("gemma3", "Gemma3ForConditionalGeneration", "model.vision_tower", PROJECTOR, LANGUAGE_MODEL),
        # The decoder is model.text_model here, not language_model.
        Family(
            "idefics3",
            "Idefics3ForConditionalGeneration",
            "model.vision_model",
            "model.connector",
            "model.text_model",
            attention_view="last",
        ),
    )
}


def family_named(model_type: str, where: str = "model") -> Family:
    """The family of a config's ``model_type``; an unsupported one fails naming the supported ones."""
    if model_type not in FAMILIES:
        supported = ", ".join(f"{f.name} ({f.architecture})" for f in FAMILIES.values())
        raise ValueError(f"{where}: model_type {model_type!r} is not a supported VLM family; supported: {supported}")
    return FAMILIES[model_type]


def detect(checkpoint: str | Path) -> Family:
    """The family of a checkpoint folder, from its config.json (before any weight is read)."""
    config = json.loads((Path(checkpoint) / "config.json").read_text())
    return family_named(str(config.get("model_type")), str(checkpoint))


def family_of(model: Any) -> Family:
    """The family of a loaded model (a PeftModel's ``config`` is its base model's)."""
    return family_named(model.config.model_type, type(model).__name__)


# --- prompts and processor calls ------------------------------------------------------------------


def tokenizer_adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def with_bos(tokenizer: Any, text: str) -> str:
    """``text`` starting with BOS exactly when the tokenizer would put one there itself."""
    bos = tokenizer.bos_token
    if bos and not text.startswith(bos) and tokenizer_adds_bos(tokenizer):
        return bos + text
    return text


def render(processor: Any, turns: list[dict[str, Any]], **template: Any) -> str:
    """The chat template's text for ``turns``, to be tokenized with ``add_special_tokens=False``."""
    return with_bos(processor.tokenizer, processor.apply_chat_template(turns, tokenize=False, **template))


def encode(processor: Any, texts: Sequence[str], images: Sequence[Image.Image]) -> Any:
    """One processor call for a batch with one image per prompt, left-padded for generation."""
    return processor(
        text=list(texts),
        images=[[image] for image in images],
        padding=True,
        padding_side="left",
        add_special_tokens=False,
        return_tensors="pt",
    )


def open_image(image: str | Path | Image.Image) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    with Image.open(image) as handle:
        return handle.convert("RGB")


def to_model(inputs: Any, model: Any) -> dict[str, Any]:
    """Every processor key on the model's device; pixels in its float dtype (grids, masks and sizes
    keep theirs)."""
    moved = {}
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.to(model.device)
            if key.startswith("pixel_values") and value.is_floating_point():
                value = value.to(model.dtype)
        moved[key] = value
    return moved


class TemplateProcessor:
    """The real processor, rendering chat templates with BOS exactly once (``with_bos``).

    TRL's collators call ``apply_chat_template`` and then the processor with
    ``add_special_tokens=False``; through this wrapper they tokenize prompts the way generation
    does. Everything else is the real processor's.
    """

    def __init__(self, processor: Any):
        self._processor = processor

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)

    def apply_chat_template(self, *args: Any, **kwargs: Any) -> Any:
        text = self._processor.apply_chat_template(*args, **kwargs)
        return with_bos(self._processor.tokenizer, text) if isinstance(text, str) else text

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._processor(*args, **kwargs)
