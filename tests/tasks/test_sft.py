"""The sft stage: a loadable checkpoint, frozen parts left alone, the store caching it."""

from __future__ import annotations

import torch

from models import vlm
from tasks.config import SFTConfig
from tasks.sft import model_dir, sft
from tasks.store import ArtifactStore
from tests.support.samples import ingest_artifact

CONFIG = SFTConfig(epochs=15, batch_size=4, learning_rate=1e-2, trainable=["projector", "language_model"])


def test_sft_trains_the_chosen_parts_and_the_store_reuses_it(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    specs = [{"sample_id": f"s{i}", "split": "train", "answer": "yes" if i % 2 else "no"} for i in range(8)]
    specs += [{"sample_id": "held-out", "split": "test"}]
    ingest = ingest_artifact(store, tmp_path / "images", specs)

    manifest = sft(store, CONFIG, ingest)

    assert manifest.counts["samples.trained"] == 8 and manifest.counts["samples.skipped.split"] == 1
    assert manifest.counts["train.steps"] == 30
    tuned = vlm.load(model_dir(manifest), device="cpu")
    # The untrained tiny model of the same seed is the reference for what changed.
    fresh = vlm.load(untrained_copy(tmp_path, tuned), device="cpu")
    changed = {name: not torch.equal(p, fresh.model.state_dict()[name]) for name, p in tuned.model.state_dict().items()}
    assert not any(v for k, v in changed.items() if "vision_tower" in k)
    assert any(v for k, v in changed.items() if "multi_modal_projector" in k)
    assert any(v for k, v in changed.items() if "language_model" in k)
    answers = vlm.generate(
        tuned, ["Is the lung healthy?"], [ingest_image(ingest)], vlm.GenerationSettings(max_new_tokens=3)
    )
    assert answers[0][0].split()[0] in {"yes", "no"}

    assert sft(store, CONFIG, ingest) == manifest  # same key: nothing retrained


def untrained_copy(tmp_path, tuned: vlm.VLM):
    from models.tiny import build_tiny_llava

    config = tuned.model.config
    return build_tiny_llava(
        tmp_path / "fresh",
        seed=CONFIG.tiny_seed,
        image_size=config.vision_config.image_size,
        patch_size=config.vision_config.patch_size,
        hidden_size=config.text_config.hidden_size,
        layers=config.text_config.num_hidden_layers,
        extra_texts=["yes", "no", "Is the lung healthy?"] * 4,
        vision=CONFIG.tiny_vision,
    )


def ingest_image(ingest):
    from tasks import catalog

    return catalog.rows(ingest, catalog.SAMPLES)[0]["image_path"]
