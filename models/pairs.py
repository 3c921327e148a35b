"""Preference pairs as the weighted trainer reads them: one training row per pair, and the
collator that gives each side of a pair its own image.

A visual pair's rejected side is the same text on a *different* (lesion-noised) image, which
TRL's vision collator cannot express: it gives both sides the chosen image. ``ImagePairCollator``
runs TRL's collator with each side's own images in the one processor call that builds the image
tensors, so the model family's own processor code lays them out (``models/families.py``).
``check_lengths`` fails before training when ``max_length`` would leave a pair no answer token.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

from models import families
from models.families import open_image
from models.trl_checks import check_image_call, check_pair_layout

log = logging.getLogger(__name__)

PAIR_TYPES = ("text", "visual")
# Keys the collator adds for the trainer; they never reach the model.
PAIR_KEYS = ("weight", "pair_type")


def preference_example(
    prompt: str, chosen: str, rejected: str, chosen_image: str, rejected_image: str, weight: float, pair_type: str
) -> dict[str, Any]:
    """One training row in the conversational form TRL's vision collator expects."""
    if pair_type not in PAIR_TYPES:
        raise ValueError(f"pair_type must be one of {PAIR_TYPES}, got {pair_type!r}")
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "image": str(chosen_image),
        "rejected_image": str(rejected_image),
        "weight": float(weight),
        "pair_type": pair_type,
    }


def stand_in(image: str | Path | Image.Image) -> Image.Image:
    """A blank image of the file's size, read from its header alone: every supported processor's
    image-token count depends on the size only (fixed for LLaVA and Gemma 3, the resized grid for
    Qwen, the tiles for LLaVA-NeXT and Idefics3), so lengths come out as training sees them."""
    if isinstance(image, Image.Image):
        return blank(image.size)
    with Image.open(image) as handle:  # reads the header; the pixels are decoded on load(), never here
        return blank(handle.size)


@functools.lru_cache(maxsize=32)
def blank(size: tuple[int, int]) -> Image.Image:
    return Image.new("RGB", size)


@dataclass
class ImagePairCollator(DataCollatorForVisionPreference):
    """TRL's vision preference collator, with each side of a pair seeing its own image.

    The batch is ``[chosen_0..chosen_B-1, rejected_0..rejected_B-1]``. TRL would give both
    halves the chosen image; here the one processor call that builds the image tensors gets
    ``[[c_0]..[c_B-1], [r_0]..[r_B-1]]`` (``PairProcessor``), so the family's own code lays
    out every image: Qwen's patches of all 2B images concatenated with one
    ``image_grid_thw`` row each, Idefics3's and LLaVA-NeXT's tiles, and a rejected image of
    another size than its chosen one with its own number of image tokens. The wrapper renders
    templates with BOS exactly once, too, which TRL's ``add_special_tokens=False`` drops for
    templates that leave BOS to the tokenizer. ``family``: images are prepared as its training saw
    them (``Family.prepare``: LLaVA pads to square), as generation and evaluation prepare them.
    ``load_image`` reads a row's image (``stand_in``: its size alone, for counting tokens).
    """

    family: families.Family | None = None
    load_image: Callable[[str | Path | Image.Image], Image.Image] = open_image

    def image(self, path: str | Path | Image.Image) -> Image.Image:
        image = self.load_image(path)
        return image if self.family is None else self.family.prepare(image, self.processor)

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        examples = [dict(example) for example in examples]  # TRL's collator edits its input
        chosen_images, rejected_images = [], []
        for example in examples:
            chosen_path = example.pop("image")
            rejected_path = example.pop("rejected_image", chosen_path)
            chosen = self.image(chosen_path)
            chosen_images.append([chosen])
            rejected_images.append([chosen if rejected_path == chosen_path else self.image(rejected_path)])
            example["images"] = [chosen]
        weights = torch.tensor([float(e.pop("weight", 1.0)) for e in examples], dtype=torch.float32)
        pair_types = torch.tensor([PAIR_TYPES.index(e.pop("pair_type", "text")) for e in examples], dtype=torch.long)
        processor = PairProcessor(self.processor, chosen_images, rejected_images)
        output = DataCollatorForVisionPreference.torch_call(replace(self, processor=processor), examples)
        # A pair's two rows share their prompt tokens unless the noised image has another size.
        check_pair_layout(
            output, len(examples), [c[0].size == r[0].size for c, r in zip(chosen_images, rejected_images)]
        )
        # TRL truncates after the prompt: a prompt as long as max_length leaves no answer token (and a
        # longer one cuts image tokens, which the model then refuses).
        empty = (output["completion_mask"].sum(dim=1) == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(
                f"rows {empty} of the batch keep no answer token under max_length={self.max_length}: "
                "raise train.max_length (check_lengths finds such pairs before training)"
            )
        output["weight"] = weights
        output["pair_type"] = pair_types
        return output


class PairProcessor(families.TemplateProcessor):
    """The processor as the pair collator hands it to TRL: the one call that carries images gets
    each side's own, ``chosen + rejected``, where TRL passes the chosen images for both halves."""

    def __init__(self, processor: Any, chosen: list[list[Image.Image]], rejected: list[list[Image.Image]]):
        super().__init__(processor)
        self._chosen, self._rejected = chosen, rejected

    def __call__(self, *args: Any, images: Any = None, **kwargs: Any) -> Any:
        if images is not None:
            check_image_call(images, self._chosen)
            images = self._chosen + self._rejected
        return super().__call__(*args, images=images, **kwargs)


def check_lengths(
    processor: Any,
    examples: list[dict[str, Any]],
    max_length: int | None,
    chunk: int = 16,
    family: families.Family | None = None,
) -> None:
    """Fail before training when a pair's prompt - with its images expanded into image tokens, on
    either side - leaves no answer token under ``max_length``; log how many answers it truncates.

    One pass of the pair collator over the set, each image replaced by a blank one of its size
    (``stand_in``: no image is decoded): the lengths are exactly those training sees.
    """
    if max_length is None:
        return
    collator = ImagePairCollator(processor, family=family, load_image=stand_in)
    longest_prompt, too_long, truncated = 0, 0, 0
    for start in range(0, len(examples), chunk):
        batch = collator(examples[start : start + chunk])
        total = batch["attention_mask"].sum(dim=1)
        prompt = total - batch["completion_mask"].sum(dim=1)
        pairs = len(batch["weight"])
        longest_prompt = max(longest_prompt, int(prompt.max()))
        too_long += int((prompt >= max_length).view(2, pairs).any(dim=0).sum())
        truncated += int((total > max_length).view(2, pairs).any(dim=0).sum())
    if too_long:
        raise ValueError(
            f"{too_long} of {len(examples)} pairs have a prompt of max_length={max_length} tokens or more "
            f"(images expanded; the longest is {longest_prompt}): no answer token would be trained on; "
            f"raise train.max_length above {longest_prompt}"
        )
    if truncated:
        log.warning(
            "train: max_length=%d truncates the answers of %d of %d pairs", max_length, truncated, len(examples)
        )
