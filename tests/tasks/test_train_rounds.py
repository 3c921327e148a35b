"""Training as `mmedpo iterate` uses it: an adapter trained further (reference = the base model),
and several rounds' sets trained on at once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tasks.config import ConfigError, TrainConfig
from tasks.store import ArtifactStore, StageCachePolicy
from tasks.train import CODE, STAGE, preference_snapshot, train, train_inputs
from tests.support.configs import small_train
from tests.support.preference import preference_rows, write_train_pairs


def config_for(model: Path, **overrides) -> TrainConfig:
    values = dict(model=model, learning_rate=1e-2, projector_lr=1e-3, max_steps=3, warmup_ratio=0.0)
    return small_train(**{**values, **overrides})


def first_step(manifest) -> dict:
    history = json.loads(manifest.file("log_history.json").read_text())
    return next(entry for entry in history if entry.get("step") == 1 and "loss" in entry)


@pytest.mark.slow
def test_a_continued_adapter_starts_where_it_ended_against_the_base_model(tmp_path, tiny_llava):
    rows = preference_rows(tmp_path / "img")
    path = write_train_pairs(tmp_path / "a.parquet", rows)
    store = ArtifactStore(tmp_path / "store")
    config = config_for(tiny_llava)
    first = train(store, config, preference_snapshot(path), path)
    # A new adapter starts as the base model: the first step's rewards are exactly 0.
    assert first_step(first)["rewards/chosen"] == 0.0 and first_step(first)["rewards/rejected"] == 0.0

    adapter = Path(first.path) / "adapter"
    continued_config = config_for(tiny_llava, init_adapter=adapter)
    continued = train(store, continued_config, preference_snapshot(path), path, init=first)
    assert (
        continued.inputs["init"] == first.key and continued.inputs["init_adapter"] == (store.digests.tree(adapter)[:16])
    )
    assert f"train/{first.key}" in continued.lineage
    # It starts from round 1's adapter and is measured against the base model (adapters off), not
    # against a frozen copy of round 1's adapter (TRL's default: its first rewards would be 0).
    step = first_step(continued)
    assert abs(step["rewards/chosen"]) > 1e-4 and abs(step["rewards/rejected"]) > 1e-4
    before = load_file(first.file("adapter/adapter_model.safetensors"))
    after = load_file(continued.file("adapter/adapter_model.safetensors"))
    assert set(after) == set(before) and any(name for name in before if "multi_modal_projector" in name)
    assert any(not after[name].equal(before[name]) for name in before)  # and it trained further

    fresh = train(store, config_for(tiny_llava, max_steps=4), preference_snapshot(path), path)
    assert fresh.key != continued.key


def test_an_adapter_of_another_shape_is_refused_by_field(tmp_path, tiny_llava):
    rows = preference_rows(tmp_path / "img")
    path = write_train_pairs(tmp_path / "a.parquet", rows)
    store = ArtifactStore(tmp_path / "store")
    first = train(store, config_for(tiny_llava, max_steps=1), preference_snapshot(path), path)
    other = config_for(tiny_llava, lora_r=8, init_adapter=Path(first.path) / "adapter")
    with pytest.raises(ConfigError, match=r"train.init_adapter: .*adapter_config.json has r=4 but train.lora_r is 8"):
        train(store, other, preference_snapshot(path), path, init=first)
    with pytest.raises(ConfigError, match="train.init_adapter needs train.model"):
        train(store, TrainConfig(init_adapter=Path(first.path) / "adapter"), preference_snapshot(path), path)


@pytest.mark.slow
def test_a_union_of_sets_trains_each_pair_once_and_keys_every_set(tmp_path, tiny_llava):
    rows = preference_rows(tmp_path / "img")
    older = write_train_pairs(tmp_path / "r1.parquet", rows)
    newer_rows = [dict(r) for r in rows]
    newer_rows[0]["rejected"] = "No, the liver looks normal here."  # round 2's rejection of the same sample
    newer = write_train_pairs(tmp_path / "r2.parquet", newer_rows)
    store = ArtifactStore(tmp_path / "store")
    config = config_for(tiny_llava, max_steps=1)

    both = train(store, config, preference_snapshot(newer), [newer, older], union=[preference_snapshot(older)])
    assert both.inputs == {"assemble": preference_snapshot(newer).key, "union.0": preference_snapshot(older).key} | {
        "model": both.inputs["model"]
    }
    assert both.counts["pairs.in_set"] == 16
    assert both.counts["pairs.skipped.duplicate"] == 7  # every pair but the changed rejection
    assert both.counts["pairs.trained"] == 9
    alone = train(store, config, preference_snapshot(newer), newer)
    assert alone.key != both.key and alone.counts["pairs.trained"] == 8
    with pytest.raises(ValueError, match="2 preference locations for 1 sets"):
        train(store, config, preference_snapshot(newer), [newer, older])

    # Prefect's cache key is the store's key: the union's sets are in it.
    policy = StageCachePolicy(STAGE, CODE)
    parameters = {"store_root": str(store.root), "config": config, "assemble": preference_snapshot(newer)}
    with_union = policy.compute_key(None, parameters | {"union": [preference_snapshot(older)]}, {})
    without = policy.compute_key(None, parameters | {"union": None}, {})
    assert with_union.startswith(f"train-{both.key}-") and without.startswith(f"train-{alone.key}-")
    expected, _ = store.key(STAGE, CODE, config, train_inputs(preference_snapshot(newer), None))
    assert expected == alone.key
