"""The image as the model saw it in training: LLaVA pads to square with its processor's mean colour
(expand2square), where its CLIP processor alone would centre-crop; the noise runs in the normalization
of the model the pairs are for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models import vlm
from models.families import FAMILIES
from models.tiny import build_tiny_llava
from tasks.config import NoiseConfig
from tasks.config.noise import CLIP_MEAN, CLIP_STD
from tasks.noise import resolved
from tasks.noise.diffusion import normalization


def pixels(processor, image: Image.Image) -> torch.Tensor:
    return processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]


def test_pad_keeps_a_non_square_images_borders_that_the_crop_cuts(tiny_llava):
    loaded = vlm.load(tiny_llava, device="cpu")
    rng = np.random.default_rng(0)
    wide = Image.fromarray(rng.integers(0, 256, (40, 80, 3), dtype=np.uint8))
    padded = loaded.image(wide)
    assert padded.size == (80, 80)
    # expand2square: the original centred, the bands above and below in int(255 * image_mean).
    mean = tuple(int(255 * m) for m in loaded.processor.image_processor.image_mean)
    band = np.asarray(padded)[:20]
    assert (band == np.asarray(mean, dtype=np.uint8)).all()
    assert np.array_equal(np.asarray(padded)[20:60], np.asarray(wide))
    assert not torch.allclose(pixels(loaded.processor, padded), pixels(loaded.processor, wide))


def test_a_square_image_is_exactly_what_the_familys_processor_makes_of_it(tiny_llava):
    loaded = vlm.load(tiny_llava, device="cpu")
    square = Image.fromarray(np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8))
    assert torch.equal(pixels(loaded.processor, loaded.image(square)), pixels(loaded.processor, square))


def test_pad_is_llavas_preparation_and_the_others_keep_their_processors_own():
    assert FAMILIES["llava"].image_preparation == "pad"
    assert {f.image_preparation for name, f in FAMILIES.items() if name != "llava"} == {"processor"}
    image = Image.new("RGB", (30, 10))
    assert FAMILIES["qwen2_vl"].prepare(image, None) is image


@pytest.mark.parametrize(("tower", "mean", "std"), [("siglip", (0.5,) * 3, (0.5,) * 3), ("clip", CLIP_MEAN, CLIP_STD)])
def test_space_auto_takes_the_towers_own_statistics(tmp_path, tower, mean, std):
    model = build_tiny_llava(tmp_path / tower, vision=tower)
    config = resolved(NoiseConfig(model_path=model))
    assert config.space == "clip"
    assert config.clip_mean == pytest.approx(mean) and config.clip_std == pytest.approx(std)
    got_mean, got_std = normalization(config, 3)
    assert got_std == pytest.approx(std)


def test_space_auto_without_a_model_is_clips():
    config = NoiseConfig()
    assert config.space == "auto"
    assert resolved(config).space == "clip" and resolved(config).clip_std == pytest.approx(CLIP_STD)
    _, std = normalization(config, 3)
    assert std == pytest.approx(CLIP_STD)
