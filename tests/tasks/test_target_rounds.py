"""The target backend as `mmedpo iterate` uses it: sampling a trained adapter (on-policy), picking
without an LLM, a window of the samples per round, seeds that follow the samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks import catalog
from tasks.config import ConfigError, HallucinateConfig, SampleWindow, TargetSamplingConfig
from tasks.hallucinate import hallucinate
from tasks.store import ArtifactStore
from tests.support.adapter import train_artifact
from tests.support.samples import ingest_manifest, sample_row, write_random_image


def sample(sid, answer, question, *, answer_type="open", image=Path("/nonexistent.png"), split="train"):
    return sample_row(
        sid, image, dataset="test", split=split, question=question, answer=answer, answer_type=answer_type
    )


def rows_of(manifest):
    return {r["sample_id"]: r for r in catalog.rows(manifest, catalog.HALLUCINATIONS)}


def offline(tmp_path, **target):
    """Selector-free target sampling; the endpoint is a closed port, so any LLM call would fail its row."""
    return HallucinateConfig(
        backend="target",
        llm={"base_url": "http://127.0.0.1:9/v1", "max_retries": 0, "timeout_s": 1},
        cache_dir=tmp_path / "cache",
        target=TargetSamplingConfig(model_path=tmp_path, selector="first", **target),
    )


def test_selector_free_target_takes_the_models_own_answers_and_falls_back_to_rules(tmp_path, monkeypatch):
    import tasks.hallucinate.target as target_backend

    rows = [
        sample("yes-1", "Yes", "Is there a pleural effusion?", answer_type="closed"),
        sample("yes-2", "Yes", "Is the heart enlarged?", answer_type="closed"),
        sample("side", "Left Lung", "Where is the nodule?"),
        sample("none", "the patient", "Who is shown?"),
    ]
    sampled = {
        "Is there a pleural effusion?": ["Yes, a small one.", "No, there is no pleural effusion.", "No."],
        "Is the heart enlarged?": ["The heart is of normal size on this radiograph."],  # neither yes nor no
        "Where is the nodule?": ["In the upper lobe of the right lung, near the hilum, 2 cm."],  # too long
        "Who is shown?": ["A person standing in front of a wall, smiling."],
    }
    monkeypatch.setattr(
        target_backend, "sample_target", lambda samples, config: [sampled[s["question"]] for s in samples]
    )
    store = ArtifactStore(tmp_path / "store")
    ingest = ingest_manifest(store, rows)

    out = rows_of(hallucinate(store, offline(tmp_path, fallback="rules"), ingest))
    # The first answer that passes the guard (the model's "Yes" equals the ground truth: not usable).
    assert (out["yes-1"]["rejected"], out["yes-1"]["origin"], out["yes-1"]["error_type"]) == (
        "No",
        "target_model",
        "yes_no_flip",
    )
    assert out["yes-1"]["attempts"] == 0 and out["yes-1"]["candidates"] == sampled["Is there a pleural effusion?"]
    assert (out["yes-2"]["rejected"], out["yes-2"]["origin"]) == ("No", "rules")
    assert (out["side"]["rejected"], out["side"]["origin"], out["side"]["error_type"]) == (
        "Right Lung",
        "rules",
        "laterality",
    )
    assert out["side"]["backend"] == "target" and out["side"]["candidates"] == sampled["Where is the nodule?"]
    assert (out["none"]["status"], out["none"]["reason"], out["none"]["backend"]) == (
        "skipped",
        "no_rule_applies",
        "target",
    )

    manifest = hallucinate(store, offline(tmp_path, fallback="skip"), ingest)
    skipped = rows_of(manifest)
    assert skipped["yes-1"]["rejected"] == "No"
    assert (skipped["side"]["status"], skipped["side"]["reason"]) == ("skipped", "no_usable_candidate")
    assert not any(name.startswith("llm.") for name in manifest.counts)  # no endpoint was asked anything
    assert manifest.counts["rejections.skipped.no_usable_candidate"] == 3
    assert manifest.counts["rejections[test].share.target_model"] == 1.0  # of the ok ones


def test_a_window_takes_each_round_its_own_samples_and_items_outlive_it(tmp_path):
    rows = [sample(f"s{i}", "Yes", "Is there an effusion?", answer_type="closed") for i in range(5)]
    rows.append(sample("t0", "No", "Is there an effusion?", answer_type="closed", split="test"))
    store = ArtifactStore(tmp_path / "store")
    ingest = ingest_manifest(store, rows)
    seen: list[set[str]] = []
    for start in (0, 2, 4):
        window = SampleWindow(splits=["train"], start=start, count=2, seed=3)
        manifest = hallucinate(store, HallucinateConfig(window=window), ingest)
        got = set(rows_of(manifest))
        assert got == window.select(rows) and len(got) == 2 and not got & {"t0"}
        assert (
            manifest.counts["samples.out_of_scope.window"] == 3 and manifest.counts["samples.out_of_scope.split"] == 1
        )
        seen.append(got)
    assert len(seen[0] | seen[1]) == 4  # rounds 1 and 2 take new samples
    assert len(seen[2] - seen[0] - seen[1]) == 1 and len(seen[2] & seen[0]) == 1  # round 3 wraps around
    # The window selects items, it is not part of them: all samples at once reuses every item seen.
    everything = hallucinate(store, HallucinateConfig(), ingest)
    assert everything.work == {"computed": 0, "reused": 5}


def test_target_samples_the_trained_adapter_and_names_its_train_artifact(tmp_path, tiny_llava):
    from models import vlm
    from tasks.hallucinate.target import generation_settings, sampling_model

    images = [write_random_image(tmp_path / f"{i}.png", i) for i in range(3)]
    rows = [sample(f"q{i}", "Yes", "Is the lung healthy?", answer_type="closed", image=images[i]) for i in range(3)]
    store = ArtifactStore(tmp_path / "store")
    ingest = ingest_manifest(store, rows)
    policy = train_artifact(store, tiny_llava, images[0], "No")
    adapter = Path(policy.path) / "adapter"
    # A loose guard: random weights answer anything, and every answer should be usable.
    base_config = offline(tmp_path, fallback="skip", num_samples=2, max_new_tokens=5, batch_size=1)
    base_config = base_config.model_copy(
        update={
            "min_length_ratio": 0.01,
            "max_length_ratio": 100.0,
            "target": base_config.target.model_copy(update={"model_path": tiny_llava}),
        }
    )
    config = base_config.model_copy(update={"target": base_config.target.model_copy(update={"adapter": adapter})})

    with pytest.raises(ConfigError, match="not inside the policy's train artifact"):
        hallucinate(store, base_config, ingest, policy)
    base = hallucinate(store, base_config, ingest)
    tuned = hallucinate(store, config, ingest, policy)

    assert tuned.key != base.key and tuned.inputs["policy"] == policy.key and f"train/{policy.key}" in tuned.lineage
    assert tuned.inputs["target.adapter"] == store.digests.tree(adapter)[:16]
    model = sampling_model(config.target)
    tuned_rows, base_rows = rows_of(tuned), rows_of(base)
    for row in rows:
        again = vlm.generate(model, [row["question"]], [row["image_path"]], generation_settings(config.target, [row]))
        assert tuned_rows[row["sample_id"]]["candidates"] == again[0]  # on-policy: what the adapter says
    assert any(tuned_rows[s]["candidates"] != base_rows[s]["candidates"] for s in tuned_rows)


def test_a_samples_answers_do_not_depend_on_its_shard(tmp_path, tiny_llava):
    images = [write_random_image(tmp_path / f"{i}.png", i) for i in range(2)]
    rows = [sample(f"q{i}", "Yes", "Is the lung healthy?", answer_type="closed", image=images[i]) for i in range(2)]
    config = offline(tmp_path, fallback="skip", num_samples=2, max_new_tokens=5, batch_size=1)
    config = config.model_copy(update={"target": config.target.model_copy(update={"model_path": tiny_llava})})
    together = ArtifactStore(tmp_path / "together")
    alone = ArtifactStore(tmp_path / "alone")
    both = rows_of(hallucinate(together, config, ingest_manifest(together, rows)))
    second = rows_of(hallucinate(alone, config, ingest_manifest(alone, rows[1:])))
    assert both["q1"]["candidates"] == second["q1"]["candidates"]  # first in its shard here, second there
    assert both["q0"]["candidates"] != both["q1"]["candidates"]
