"""The attention localizer's map for every family: the image tokens placed back on the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models import attention, vlm

HEIGHT, WIDTH = 48, 80  # not square: a wrong axis or a pad band left in shows in the peak's place

# Where the view the map is made of sits among the image tokens, and its tokens per side, as the
# tiny models are built (models/tiny): LLaVA-NeXT's base view leads (a 32 px tile of 8 px patches),
# Idefics3's global view closes (the same tile after a 2 x 2 pixel shuffle); the others' tokens are
# all one grid.
TILED_VIEW = {"llava_next": ("first", 4), "idefics3": ("last", 2)}


def image_positions(model, question, answer, image) -> torch.Tensor:
    batch = vlm.teacher_forced(model, [question], [answer], [image])
    return torch.nonzero(batch["input_ids"][0] == attention.image_token_id(model.model)).flatten()


def test_every_family_maps_its_image_tokens_and_the_peak_follows_the_relevance(
    family, tiny_checkpoint, tmp_path, monkeypatch
):
    model = attention.load(tiny_checkpoint(family))
    pixels = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    path = tmp_path / "scan.png"
    Image.fromarray(pixels).save(path)
    positions = image_positions(model, "Is there a mass?", "yes", Image.open(path).convert("RGB"))
    where, side = TILED_VIEW.get(family, ("all", None))
    view = positions if where == "all" else positions[: side**2] if where == "first" else positions[-(side**2) :]
    peaks = {}
    for corner, token in (("top left", view[0]), ("bottom right", view[-1])):
        # All of the answer's relevance on one image token: the view's first (last) cell, row-major.
        def concentrated(layers, token=int(token)):
            relevance = torch.zeros(layers[0].shape[-1], layers[0].shape[-1])
            relevance[:, token] = 1.0
            return relevance

        monkeypatch.setattr(attention, "attention_rollout", concentrated)
        (mapped,) = attention.relevance_maps(model, ["Is there a mass?"], ["yes"], [path])
        assert mapped is not None and mapped.shape == (HEIGHT, WIDTH)
        peaks[corner] = np.unravel_index(int(np.argmax(mapped)), mapped.shape)
    (top, left), (bottom, right) = peaks["top left"], peaks["bottom right"]
    assert top < HEIGHT / 2 and left < WIDTH / 2, peaks
    assert bottom >= HEIGHT / 2 and right >= WIDTH / 2, peaks


def test_both_methods_give_a_map_of_the_image_and_differ(tiny_llava, tmp_path):
    model = attention.load(tiny_llava)
    path = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (HEIGHT, WIDTH), dtype=np.uint8)).save(path)
    args = (["Is there a mass?", "Where is it?"], ["yes", "in the liver"], [path, path])
    rollout = attention.relevance_maps(model, *args, method="rollout")
    gradient = attention.relevance_maps(model, *args, method="gradient")
    for plain, weighted in zip(rollout, gradient):
        assert plain.shape == weighted.shape == (HEIGHT, WIDTH) and np.isfinite(weighted).all()
        assert not np.allclose(plain / plain.max(), weighted / weighted.max())
    with pytest.raises(attention.Unsupported, match="attention method 'saliency'"):
        attention.relevance_maps(model, *args, method="saliency")


def test_gradient_rollout_adds_each_layers_positive_head_mean():
    a = torch.tensor([[[0.5, -0.2], [0.1, 0.4]], [[0.3, 0.2], [-0.3, 0.2]]])  # 2 heads
    mean_positive = torch.tensor([[0.4, 0.1], [0.05, 0.3]])
    once = torch.eye(2) + mean_positive
    assert torch.allclose(attention.gradient_rollout([a]), once)
    assert torch.allclose(attention.gradient_rollout([a, a]), once + mean_positive @ once)


def test_the_answer_is_read_where_it_is_predicted():
    is_answer = torch.tensor([False, False, False, True, True, False])  # prompt, prompt, prompt, "yes", eos, pad
    assert attention.predicting(is_answer).tolist() == [False, False, True, True, False, False]


def test_through_the_tower_a_tokens_relevance_lands_on_the_patch_its_tower_read(tiny_llava, tmp_path, monkeypatch):
    model = attention.load(tiny_llava)
    path = tmp_path / "scan.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(path)
    first = int(image_positions(model, "Is there a mass?", "yes", Image.open(path).convert("RGB"))[0])

    def on_the_first_token(layers):
        relevance = torch.zeros(layers[0].shape[-1], layers[0].shape[-1])
        relevance[:, first] = 1.0
        return relevance

    monkeypatch.setattr(attention, "attention_rollout", on_the_first_token)
    (plain,) = attention.relevance_maps(model, ["Is there a mass?"], ["yes"], [path])
    # A tower whose first token read only the last patch (bottom right).
    tokens = 16
    moved = torch.zeros(1, tokens, tokens)
    moved[0, 0, tokens - 1] = 1.0
    monkeypatch.setattr(attention, "tower_rollout", lambda model, pixels: moved)
    (carried,) = attention.relevance_maps(model, ["Is there a mass?"], ["yes"], [path], through_tower=True)
    top, left = np.unravel_index(int(np.argmax(plain)), plain.shape)
    assert top < 32 and left < 32
    y, x = np.unravel_index(int(np.argmax(carried)), carried.shape)
    assert y >= 32 and x >= 32


def test_the_towers_rollout_covers_its_feature_layers_without_cls(tiny_llava, tiny_checkpoint):
    model = attention.load(tiny_llava)  # CLIP tower, 2 layers, features from layer -2, CLS dropped
    pixels = torch.rand(2, 3, 32, 32)
    rolled = attention.tower_rollout(model.model, pixels)
    assert rolled.shape == (2, 16, 16)
    tower = model.model.model.vision_tower
    (first_layer,) = tower(pixels, output_attentions=True).attentions[:1]
    expected = attention.attention_rollout([first_layer[1].float()])[1:, 1:]
    assert torch.allclose(rolled[1], expected, atol=1e-6)
    with pytest.raises(attention.Unsupported, match="only the llava family"):
        attention.relevance_maps(attention.load(tiny_checkpoint("gemma3")), ["q"], ["a"], [], through_tower=True)
