"""Localization per data set: a chain of sources, the attention localizer for box-less samples."""

from __future__ import annotations

import numpy as np
import pytest

from models import attention
from tasks.config import ConfigError, LocalizeConfig, RunConfig, validate
from tasks.localize.localizers import make_localizer
from tests.support.samples import sample_row, write_image


@pytest.fixture
def rows(tmp_path):
    rng = np.random.default_rng(0)
    boxed = write_image(tmp_path / "boxed.png", rng.integers(0, 255, (40, 60), dtype=np.uint8))
    plain = write_image(tmp_path / "plain.png", rng.integers(0, 255, (50, 30, 3), dtype=np.uint8))
    return [
        sample_row("slake-1", boxed, boxes=[[10, 10, 30, 25]], dataset="slake"),
        sample_row("slake-2", plain, dataset="slake"),
        sample_row("rad-1", plain, dataset="vqa-rad"),
        sample_row("rad-2", boxed, boxes=[[10, 10, 30, 25]], dataset="vqa-rad"),
    ]


def test_the_default_chain_falls_through_to_attention_and_per_source_chains_win(rows, tiny_llava):
    config = LocalizeConfig(attention={"model_path": tiny_llava}, per_source={"slake": ["annotation"]})
    assert config.chain_for("vqa-rad") == ["annotation", "attention"] and config.chain_for("slake") == ["annotation"]
    regions = make_localizer(config).locate(rows)
    got = [(r.status, r.source) for r in regions]
    assert got == [
        ("ok", "annotation"),  # its box
        ("no_region", "annotation"),  # slake: annotation only, and it has no box
        ("ok", "attention"),  # no box: the model's attention
        ("ok", "annotation"),  # a box comes first
    ]
    rad = regions[2]
    assert rad.mask.shape == (50, 30) and 0 < rad.mask.mean() < 1 and 0 <= rad.confidence <= 1


def test_attention_needs_a_model_and_the_run_model_supplies_it(tiny_llava):
    with pytest.raises(ConfigError, match="attention needs a model"):
        validate({"localize": {"source": "attention"}}, RunConfig, "run.yaml")
    config = validate(
        {
            "model": str(tiny_llava),
            "ingest": {"sources": [{"format": "slake", "root": "/d/Slake1.0", "localize": ["annotation"]}]},
        },
        RunConfig,
        "run.yaml",
    )
    assert config.localize.attention.model_path == tiny_llava and config.noise.model_path == tiny_llava
    assert config.localize.per_source == {"slake": ["annotation"]}
    assert config.localize.default_chain == ["annotation", "attention"]


def test_rollout_is_row_stochastic_and_the_map_peaks_where_attention_went():
    layer = torch_attention()
    rollout = attention.attention_rollout([layer, layer])
    assert np.allclose(rollout.sum(dim=-1).numpy(), 1.0)
    grid = np.zeros((4, 4), dtype=np.float32)
    grid[3, 0] = 1.0
    mapped = attention.onto_image(grid, (40, 20), padded=True)  # a 40 x 40 square, the image its middle rows
    assert mapped.shape == (20, 40)
    y, x = np.unravel_index(int(np.argmax(mapped)), mapped.shape)
    assert x < 10 and y >= 10  # lower left, as in the grid (the pad bands cut away)
    assert attention.grid_shape(16, None, 1) == (4, 4) and attention.grid_shape(15, None, 1) is None
    assert attention.grid_shape(4, [1, 4, 4], 2) == (2, 2)


def torch_attention():
    import torch

    weights = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(0)).tril()
    return weights / weights.sum(dim=-1, keepdim=True)


def test_an_unreadable_image_fails_alone_in_its_attention_batch(rows, tiny_llava, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG truncated")
    batch = [rows[2], sample_row("rad-3", broken, dataset="vqa-rad"), rows[2]]
    regions = make_localizer(LocalizeConfig(source="attention", attention={"model_path": tiny_llava})).locate(batch)
    assert [(r.status, r.reason) for r in regions] == [("ok", None), ("failed", "unreadable_image"), ("ok", None)]


def test_the_tower_is_rolled_through_where_the_family_has_one_to_roll(tiny_llava, tiny_checkpoint):
    def tower(path, **setting):
        config = LocalizeConfig(source="attention", attention={"model_path": path, **setting})
        return make_localizer(config).localizers["attention"].how[1]

    gemma = tiny_checkpoint("gemma3")
    assert tower(tiny_llava) is True and tower(gemma) is False  # auto
    assert tower(tiny_llava, through_tower=False) is False
    with pytest.raises(ConfigError, match="through_tower: only a llava-family model .* not gemma3"):
        tower(gemma, through_tower=True)


def test_a_llava_whose_features_join_several_tower_layers_is_not_rolled_through(tiny_llava, monkeypatch):
    load = attention.load

    def joined(path, device="cpu"):
        loaded = load(path, device)
        loaded.model.config.vision_feature_layer = [-2, -1]
        return loaded

    monkeypatch.setattr(attention, "load", joined)
    config = LocalizeConfig(source="attention", attention={"model_path": tiny_llava})
    assert make_localizer(config).localizers["attention"].how[1] is False  # auto: off
    with pytest.raises(ConfigError, match=r"vision_feature_layer \[-2, -1\]"):
        make_localizer(LocalizeConfig(source="attention", attention={"model_path": tiny_llava, "through_tower": True}))


def test_a_model_the_attention_map_cannot_serve_stops_the_stage_not_one_sample_at_a_time(rows, tiny_llava, monkeypatch):
    def unsupported(*args, **kwargs):
        raise attention.Unsupported("no image token")

    localizer = make_localizer(LocalizeConfig(source="attention", attention={"model_path": tiny_llava}))
    monkeypatch.setattr(attention, "relevance_maps", unsupported)
    with pytest.raises(attention.Unsupported, match="no image token"):
        localizer.locate([rows[2]])
