from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks import catalog
from tasks import evaluate as ev
from tasks.config import EvaluateConfig
from tasks.evaluate import comparison
from tasks.store import ArtifactStore
from tests.support.adapter import train_artifact
from tests.support.configs import small_train
from tests.support.samples import ingest_artifact, sample_row, write_random_image

SPECS = [
    {"sample_id": "slake:1", "answer": "No"},
    {"sample_id": "slake:2", "question": "Which organ is abnormal?", "answer": "liver", "answer_type": "open"},
    {"sample_id": "slake:3", "split": "train"},
    {
        "sample_id": "iu:1",
        "dataset": "iu_xray",
        "task": "report",
        "answer_type": "report",
        "question": "Describe the findings of this chest X-ray.",
        "answer": "The heart is normal in size.",
    },
    {"sample_id": "iu:2", "dataset": "iu_xray", "task": "report", "answer_type": "report", "answer": "  "},
]


def fast(model: Path | None, **extra) -> EvaluateConfig:
    settings = {"max_new_tokens": 6, "report_max_new_tokens": 10, "batch_size": 2, "meteor": False, **extra}
    return EvaluateConfig(model=model, **settings)


# --- pure functions -------------------------------------------------------------------


def test_select_samples_filters_split_dataset_and_caps_per_dataset(tmp_path: Path) -> None:
    rows = [
        sample_row(f"{d}:{i}", tmp_path, dataset=d, split=s)
        for d in ("b", "a")
        for i, s in enumerate(["test", "train", "test", "test"])
    ]
    picked = ev.select_samples(rows, EvaluateConfig(max_samples=2))
    assert [r["sample_id"] for r in picked] == ["a:0", "a:2", "b:0", "b:2"]
    assert [r["sample_id"] for r in ev.select_samples(rows, EvaluateConfig(datasets=["b"], splits=["train"]))] == [
        "b:1"
    ]


def test_summarize_by_hand() -> None:
    def row(dataset: str, answer_type: str, answer: str, prediction: str | None, status: str = "ok") -> dict:
        return {
            "dataset": dataset,
            "answer_type": answer_type,
            "answer": answer,
            "prediction": prediction,
            "status": status,
        }

    rows = [
        row("slake", "closed", "no", "No."),  # right under both rules
        row("slake", "closed", "no", "not sure"),  # right only under the substring rule
        row("slake", "closed", "yes", None, status="failed"),  # counts as wrong
        row("slake", "open", "left lung", "the left lung"),  # recall 1, exact match
        row("slake", "open", "left lung apex", "lung"),  # recall 1/3
        row("iu", "report", "the heart is normal in size", "the heart is big in size"),
        row("iu", "report", "", None, status="skipped_empty_reference"),
    ]
    summary = ev.summarize(rows, ev.report_scores(rows, with_meteor=False))
    slake, iu = summary["datasets"]["slake"], summary["datasets"]["iu"]
    assert slake["samples"] == 5 and slake["failed"] == 1 and slake["n_closed"] == 3 and slake["n_open"] == 2
    assert slake["closed_accuracy"] == pytest.approx(1 / 3)
    assert slake["closed_substring_accuracy"] == pytest.approx(2 / 3)
    assert slake["open_recall"] == pytest.approx((1 + 1 / 3) / 2)
    assert slake["open_exact_match"] == pytest.approx(1 / 2)
    assert "bleu" not in slake
    assert iu["skipped"] == 1 and iu["n_report"] == 1
    assert iu["bleu_1"] == pytest.approx(5 / 6, abs=1e-6) and iu["rouge_l"] == pytest.approx(5 / 6)
    assert iu["meteor"] is None
    assert summary["errors"] == {}


BASE = {"datasets": {"slake": {"n_closed": 3, "closed_accuracy": 0.5, "n_open": 2, "open_recall": 0.25}}}
TRAINED = {
    "datasets": {
        "slake": {"n_closed": 3, "closed_accuracy": 0.625, "n_open": 2, "open_recall": 0.25},
        "iu": {"n_report": 4, "bleu": 0.1, "meteor": None},
    }
}


def test_comparison_rows_and_text() -> None:
    rows = comparison.comparison_rows(BASE, TRAINED)
    assert rows == [
        {"dataset": "iu", "metric": "bleu", "n": 4, "base": None, "trained": 10.0, "delta": None},
        {"dataset": "iu", "metric": "meteor", "n": 4, "base": None, "trained": None, "delta": None},
        {"dataset": "slake", "metric": "closed_accuracy", "n": 3, "base": 50.0, "trained": 62.5, "delta": 12.5},
        {"dataset": "slake", "metric": "open_recall", "n": 2, "base": 25.0, "trained": 25.0, "delta": 0.0},
    ]
    text = comparison.comparison_text(rows).splitlines()
    assert text[0].split() == ["dataset", "metric", "n", "base", "%", "trained", "%", "delta"]
    assert text[4].split() == ["slake", "closed_accuracy", "3", "50.00", "62.50", "+12.50"]
    assert text[3].split() == ["iu", "meteor", "4", "n/a", "n/a"]
    assert len({len(line) for line in text[:2]}) == 1  # header and rule are aligned
    base_only = comparison.comparison_rows(BASE)
    assert [(r["metric"], r["base"], r["trained"]) for r in base_only] == [
        ("closed_accuracy", 50.0, None),
        ("open_recall", 25.0, None),
    ]


def test_examples_take_turns_across_datasets_and_escape_markdown() -> None:
    def pred(dataset: str, i: int, prediction: str, status: str = "ok") -> dict:
        return {
            "dataset": dataset,
            "sample_id": f"{dataset}:{i}",
            "question": "q?",
            "answer": "ref",
            "prediction": prediction if status == "ok" else None,
            "status": status,
            "error": None if status == "ok" else "boom",
        }

    base = [pred("a", i, f"a{i}") for i in range(5)] + [pred("b", 0, "line1\nline2 | x"), pred("b", 1, "", "failed")]
    trained = [pred("a", i, f"A{i}") for i in range(5)]
    rows = comparison.example_rows(base, trained, count=4)
    assert [r["sample_id"] for r in rows] == ["a:0", "b:0", "a:1", "b:1"]
    assert rows[0]["base"] == "a0" and rows[0]["trained"] == "A0"
    assert rows[1]["trained"] == "(not evaluated)"
    assert rows[3]["base"] == "(failed: boom)"
    markdown = comparison.examples_markdown(rows).splitlines()
    assert markdown[0] == "| dataset | sample_id | question | reference | base | trained |"
    assert markdown[3] == "| b | b:0 | q? | ref | line1<br>line2 \\| x | (not evaluated) |"
    assert "trained" not in comparison.example_rows(base, None, count=1)[0]


# --- the stage on the tiny model ---------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "store")


def test_evaluate_stage_writes_predictions_and_metrics(store: ArtifactStore, tmp_path: Path, tiny_llava: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    specs = [*SPECS, {"sample_id": "slake:4", "image_path": str(broken)}]
    ingest = ingest_artifact(store, tmp_path / "images", specs)
    manifest = ev.evaluate(store, fast(tiny_llava), ingest)

    rows = {r["sample_id"]: r for r in catalog.rows(manifest, catalog.PREDICTIONS)}
    assert sorted(rows) == ["iu:1", "iu:2", "slake:1", "slake:2", "slake:4"]  # train split left out
    assert rows["slake:4"]["status"] == "failed" and rows["slake:4"]["error"]  # one bad image fails one row
    assert rows["iu:2"]["status"] == "skipped_empty_reference"
    ok = [rows[i] for i in ("slake:1", "slake:2", "iu:1")]
    assert all(r["status"] == "ok" and r["prediction"] for r in ok)
    assert rows["slake:1"]["closed_correct"] is not None and rows["slake:1"]["token_recall"] is None
    assert rows["slake:2"]["token_recall"] is not None and rows["iu:1"]["rouge_l"] is not None
    assert {r["adapter"] for r in rows.values()} == {None}
    assert manifest.counts == {
        "samples.seen": 5,
        "samples.seen.closed": 2,
        "samples.seen.open": 1,
        "samples.seen.report": 2,
        "samples.ok": 3,
        "samples.failed": 1,
        "samples.skipped": 1,
        "samples.skipped.empty_reference": 1,
    }

    metrics = ev.load_metrics(manifest)
    assert metrics["datasets"]["slake"]["n_closed"] == 2 and metrics["datasets"]["slake"]["failed"] == 1
    assert metrics["datasets"]["iu_xray"]["n_report"] == 1 and metrics["datasets"]["iu_xray"]["meteor"] is None
    assert metrics["model"] == str(tiny_llava) and metrics["adapter"] is None

    # Same inputs and config: the stored artifact comes back; a changed setting recomputes.
    assert ev.evaluate(store, fast(tiny_llava), ingest) == manifest
    assert ev.evaluate(store, fast(tiny_llava, max_samples=1), ingest).key != manifest.key


def test_greedy_is_reproducible_and_sampling_is_seeded(store: ArtifactStore, tmp_path: Path, tiny_llava: Path) -> None:
    ingest = ingest_artifact(store, tmp_path / "images", [{"sample_id": f"s:{i}"} for i in range(3)])
    from models import vlm as vlms

    model = vlms.load(tiny_llava, device="cpu")
    samples = ev.select_samples(catalog.rows(ingest, catalog.SAMPLES), fast(None))
    greedy = ev.generate_answers(model, samples, fast(None))
    assert greedy == ev.generate_answers(model, samples, fast(None, batch_size=3))  # batching does not change answers
    sampled = [ev.generate_answers(model, samples, fast(None, temperature=1.5, seed=seed)) for seed in (1, 1, 2)]
    assert sampled[0] == sampled[1] and sampled[0] != sampled[2]


def test_adapter_is_really_applied(store: ArtifactStore, tmp_path: Path, tiny_llava: Path) -> None:
    ingest = ingest_artifact(store, tmp_path / "images", [{"sample_id": f"s:{i}"} for i in range(3)])
    train = train_artifact(
        store, tiny_llava, write_random_image(tmp_path / "train.png", 99), "No, the lung is not healthy."
    )
    config = ev.resolve_model(fast(None), train)  # base model read from the adapter's own record
    assert config.model == tiny_llava.resolve()

    base = ev.load_predictions(ev.evaluate(store, config, ingest))
    trained_manifest = ev.evaluate(store, config, ingest, train)
    trained = ev.load_predictions(trained_manifest)
    assert [r["prediction"] for r in base] != [r["prediction"] for r in trained]
    assert {r["adapter"] for r in trained} == {train.key}
    # a few steps towards one answer: the adapted model now starts with it
    assert all(r["prediction"].startswith("No") for r in trained), [r["prediction"] for r in trained]
    assert json.loads(trained_manifest.file("metrics.json").read_text())["adapter"] == train.key


def test_resolve_model_needs_a_model(store: ArtifactStore, tiny_llava: Path) -> None:
    with pytest.raises(ev.EvaluateError, match="evaluate.model is unset"):
        ev.resolve_model(fast(None), None)
    assert ev.resolve_model(fast(tiny_llava), None).model == tiny_llava
    with pytest.raises(ev.EvaluateError, match="no config.json"):
        ev.check_model(store.root)


def test_base_model_of_a_train_artifact(store: ArtifactStore, tmp_path: Path) -> None:
    from tasks.config import StageConfig

    def artifact(tag: str, ship_model: bool):
        def build(out: Path) -> dict[str, float]:
            (out / "adapter").mkdir()
            (out / "adapter" / "adapter_config.json").write_text(
                json.dumps({"base_model_name_or_path": str(tmp_path / "gone")})
            )
            (out / "base_model.txt").write_text(str(out / "tiny-model") + "\n")  # the build folder, renamed on publish
            if ship_model:
                (out / "tiny-model").mkdir()
                (out / "tiny-model" / "config.json").write_text("{}")
            return {}

        return store.run("train", tag, StageConfig(), {}, build)

    shipped = artifact("a", ship_model=True)
    assert ev.resolve_model(fast(None), shipped).model == Path(shipped.path, "tiny-model")
    assert ev.adapter_dir(shipped) == Path(shipped.path, "adapter")
    with pytest.raises(ev.EvaluateError, match="names no local base model"):
        ev.resolve_model(fast(None), artifact("b", ship_model=False))


def test_adapter_from_the_train_stage_is_applied(store: ArtifactStore, tmp_path: Path) -> None:
    from tasks.train import preference_snapshot, train
    from tests.support.preference import preference_rows, write_train_pairs

    pairs = preference_rows(tmp_path / "pairs")
    path = write_train_pairs(tmp_path / "p.parquet", pairs)
    settings = small_train(
        lora_r=8, lora_alpha=16, learning_rate=5e-2, max_steps=4, warmup_ratio=0.0, scheduler="constant"
    )
    trained_on = train(store, settings, preference_snapshot(path), path)
    ingest = ingest_artifact(store, tmp_path / "images", [{"sample_id": f"s:{i}"} for i in range(3)])

    config = ev.resolve_model(fast(None), trained_on)
    assert config.model == Path(trained_on.path, "tiny-model")  # the base model shipped in the artifact
    base = ev.load_predictions(ev.evaluate(store, config, ingest))
    trained = ev.load_predictions(ev.evaluate(store, config, ingest, trained_on))
    assert all(r["status"] == "ok" for r in base + trained)
    assert [r["prediction"] for r in base] != [r["prediction"] for r in trained]
