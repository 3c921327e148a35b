"""The length check before training counts tokens from image sizes: no image is decoded, and
the counts are those of the decoded images."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from PIL import ImageFile

from models import vlm
from models.pairs import ImagePairCollator, check_lengths, preference_example, stand_in
from tests.support.preference import QA, write_images

SIZES = [40, (48, 96), (120, 64), 200, (33, 57)]


def pairs(folder: Path, count: int) -> list[dict]:
    """``count`` pairs over images of several sizes (a visual pair's noised image of another size too)."""
    images = [write_images(folder, i, size=size) for i, size in enumerate(SIZES)]
    images.append(write_images(folder, len(SIZES), size=64, noised_size=(80, 50)))
    rows = []
    for i in range(count):
        question, chosen, rejected = QA[i % len(QA)]
        clean, noised = images[i % len(images)]
        visual = i % 2 == 1
        rows.append(
            preference_example(
                question, chosen, chosen if visual else rejected, clean, noised if visual else clean, 1.0,
                "visual" if visual else "text",
            )
        )  # fmt: skip
    return rows


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_stand_in_images_give_the_decoded_images_token_counts(family, tiny_checkpoint, tmp_path: Path):
    processor = vlm.load(tiny_checkpoint(family), device="cpu").processor
    rows = pairs(tmp_path, 12)
    decoded = ImagePairCollator(processor)(rows)
    counted = ImagePairCollator(processor, load_image=stand_in)(rows)
    assert torch.equal(decoded["attention_mask"].sum(dim=1), counted["attention_mask"].sum(dim=1))
    assert torch.equal(decoded["completion_mask"].sum(dim=1), counted["completion_mask"].sum(dim=1))


def test_the_length_check_of_200_pairs_decodes_no_image(tiny_checkpoint, tmp_path: Path, monkeypatch):
    processor = vlm.load(tiny_checkpoint("qwen2_vl"), device="cpu").processor
    rows = pairs(tmp_path, 200)
    longest = int(max(ImagePairCollator(processor)(rows[:12])["attention_mask"].sum(dim=1)))  # decoded, before
    decodes = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decodes.append(self.filename) or real_load(self))

    check_lengths(processor, rows, max_length=4096)  # all fit
    with pytest.raises(ValueError, match="have a prompt of max_length=8 tokens or more") as failure:
        check_lengths(processor, rows, max_length=8)
    assert decodes == []
    prompt_longest = int(re.search(r"the longest is (\d+)", str(failure.value)).group(1))
    assert 0 < prompt_longest < longest


def test_max_pixels_bounds_a_qwen_processor_and_never_loosens_it(tiny_checkpoint):
    folder = tiny_checkpoint("qwen2_vl")
    own = vlm.load(folder, device="cpu").processor.image_processor.size.longest_edge
    bounded = vlm.load(folder, device="cpu", max_pixels=28 * 28 * 4).processor
    assert bounded.image_processor.size.longest_edge == 28 * 28 * 4 < own
    assert vlm.load(folder, device="cpu", max_pixels=10 * own).processor.image_processor.size.longest_edge == own
    from PIL import Image

    tokens = bounded(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[Image.new("RGB", (600, 900))])
    assert int(tokens["image_grid_thw"].prod()) // 4 <= 4  # at most 4 image tokens (2 x 2 merge)
