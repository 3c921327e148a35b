"""Models loaded once per worker process: the target VLM of a stage of several shards, SAM, the
in-process json judges; released before training takes the GPU."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from models import resident
from tasks.config import HallucinateConfig, TargetSamplingConfig
from tasks.hallucinate import hallucinate
from tasks.store import ArtifactStore
from tasks.store.items import SHARDS, InlineShards
from tests.support.samples import ingest_manifest, sample_row, write_random_image


class OneSamplePerShard(InlineShards):
    shard_size = 1


@pytest.fixture(autouse=True)
def nothing_held():
    resident.release()
    yield
    resident.release()


def test_the_target_model_is_loaded_once_for_a_stage_of_four_shards(tmp_path: Path, tiny_llava, monkeypatch):
    from models import vlm

    loads = []
    real_load = vlm.load
    monkeypatch.setattr(vlm, "load", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))
    images = [write_random_image(tmp_path / f"{i}.png", i) for i in range(4)]
    question = {"question": "Is the lung healthy?", "answer": "Yes", "answer_type": "closed"}
    rows = [sample_row(f"q{i}", images[i], split="train", **question) for i in range(4)]
    store = ArtifactStore(tmp_path / "store")
    config = HallucinateConfig(
        backend="target",
        cache_dir=tmp_path / "cache",
        min_length_ratio=0.01,
        max_length_ratio=100.0,
        target=TargetSamplingConfig(
            model_path=tiny_llava, selector="first", fallback="skip", num_samples=2, max_new_tokens=4, batch_size=1
        ),
    )
    token = SHARDS.set(OneSamplePerShard())
    try:
        manifest = hallucinate(store, config, ingest_manifest(store, rows))
    finally:
        SHARDS.reset(token)

    assert manifest.counts["samples.seen"] == 4
    assert loads == [tiny_llava]  # four shards, one load


def test_threads_asking_at_once_build_one_copy_and_use_it_one_at_a_time():
    built, inside, most = [], [0], [0]

    def build():
        built.append(1)
        return object()

    def work():
        with resident.using("model", build):
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            threading.Event().wait(0.01)
            inside[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert built == [1] and most[0] == 1
    assert resident.release() == 1 and resident.release() == 0
