"""Stage `evaluate`: answer a test split with a model (optionally + a trained adapter) and score it.

Outputs ``predictions.parquet`` (schemas.PREDICTIONS, one row per sample) and
``metrics.json`` (per data set: closed accuracy - normalized and the paper's substring
rule - open recall and exact match, report BLEU-1..4/mean, ROUGE-L, METEOR). The base
model's evaluation has no ``train`` input, so it is computed once and reused by every
training run that compares against it. ``comparison_rows`` / ``comparison_text`` /
``examples_markdown`` build the before/after views from two evaluations.
"""

from __future__ import annotations

import json
from itertools import zip_longest
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from prefect import task

from models import vlm as vlms
from tasks import metrics, schemas, ui
from tasks.config import EvaluateConfig
from tasks.store import (
    ArtifactStore,
    Manifest,
    SourceSnapshot,
    code_version,
    fingerprint_tree,
    stage_task_options,
    write_text_atomic,
)

STAGE = "evaluate"
CODE = code_version(__name__, "tasks.metrics", "models.vlm")
ADAPTER_CONFIG = "adapter_config.json"
BASE_MODEL_FILE = "base_model.txt"  # written by the train stage next to its adapter

Progress = Callable[[int, int], None]  # (samples done, total)

# Metrics in the order tables show them; all are fractions in metrics.json, % in tables.
METRICS = (
    "closed_accuracy",
    "closed_substring_accuracy",
    "closed_exact_match",
    "open_recall",
    "open_exact_match",
    "bleu",
    "bleu_1",
    "bleu_2",
    "bleu_3",
    "bleu_4",
    "rouge_l",
    "meteor",
)


class EvaluateError(ValueError):
    pass


def evaluate(
    store: ArtifactStore,
    config: EvaluateConfig,
    ingest: Manifest,
    model: SourceSnapshot,
    train: Manifest | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Evaluate ``config.model`` (+ the adapter of ``train``) on the ingest artifact's samples.

    ``model`` fingerprints the checkpoint folder (``model_snapshot``), so replacing the
    weights at the same path re-evaluates.
    """
    if config.model is None:
        raise EvaluateError("evaluate.model is unset: resolve it first with resolve_model(config, train)")
    inputs: dict[str, Any] = {"ingest": ingest, "model": model}
    if train is not None:
        inputs["train"] = train
    return store.run(STAGE, CODE, config, inputs, lambda out: build_evaluation(out, config, ingest, train, progress))


def model_snapshot(path: Path) -> SourceSnapshot:
    if not (path / "config.json").is_file():
        raise EvaluateError(f"{path}: not a transformers checkpoint folder (no config.json)")
    return SourceSnapshot(name="model", key=fingerprint_tree(path))


def adapter_dir(train: Manifest) -> Path:
    """The trained adapter inside a train artifact: the shallowest folder holding a peft adapter."""
    found = sorted((Path(f) for f in train.files if Path(f).name == ADAPTER_CONFIG), key=lambda p: (len(p.parts), str(p)))
    if not found:
        raise EvaluateError(f"train artifact {train.key} holds no {ADAPTER_CONFIG}")
    return Path(train.path) / found[0].parent


def resolve_model(config: EvaluateConfig, train: Manifest | None) -> EvaluateConfig:
    """Fill ``model`` with the trained adapter's base model when the run file leaves it unset."""
    if config.model is not None:
        return config
    if train is None:
        raise EvaluateError("evaluate.model is unset and no trained adapter names its base model: set evaluate.model")
    candidates = base_model_candidates(train)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return config.model_copy(update={"model": candidate.resolve()})
    raise EvaluateError(
        f"evaluate.model is unset and train artifact {train.key} names no local base model "
        f"(looked at {[str(c) for c in candidates]}): set evaluate.model"
    )


def base_model_candidates(train: Manifest) -> list[Path]:
    """Where a train artifact says its base model is, most direct first: a checkpoint shipped
    inside it (the demo's tiny model), the path the trainer recorded (base_model.txt), the
    path peft recorded in the adapter."""
    root = Path(train.path)
    shipped = sorted(
        root / Path(f).parent
        for f in train.files
        if Path(f).name == "config.json" and Path(f).parent != Path(".") and not (root / Path(f).parent / ADAPTER_CONFIG).is_file()
    )
    # Relative: a model inside the artifact; root / an absolute path is that absolute path.
    recorded = [root / (root / BASE_MODEL_FILE).read_text().strip()] if BASE_MODEL_FILE in train.files else []
    peft_record = json.loads((adapter_dir(train) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    return [*shipped, *map(Path, recorded), *([Path(peft_record)] if peft_record else [])]


def build_evaluation(
    out: Path, config: EvaluateConfig, ingest: Manifest, train: Manifest | None, progress: Progress | None
) -> dict[str, float]:
    assert config.model is not None
    samples = select_samples(schemas.read_parquet(ingest.file("samples.parquet"), schemas.SAMPLES).to_pylist(), config)
    adapter = train.key if train is not None else None
    answers = skipped(samples)
    if any(generated(s) for s in samples):
        model = vlms.load(config.model)
        if train is not None:
            model = vlms.apply_adapter(model, adapter_dir(train))
        answers = generate_answers(model, samples, config, progress)
    rows = [prediction_row(s, answer, error, str(config.model), adapter) for s, (answer, error) in zip(samples, answers)]
    schemas.write_parquet(schemas.table(rows, schemas.PREDICTIONS), out / "predictions.parquet")
    summary = summarize(rows, with_meteor=config.meteor)
    summary.update(model=str(config.model), adapter=adapter)
    write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2, sort_keys=True))
    statuses = [r["status"] for r in rows]
    return {
        "samples": len(rows),
        "ok": statuses.count("ok"),
        "failed": statuses.count("failed"),
        "skipped_empty_reference": statuses.count("skipped_empty_reference"),
        **{f"task_{kind}": sum(r["answer_type"] == kind for r in rows) for kind in ("closed", "open", "report")},
    }


def select_samples(samples: Iterable[Mapping[str, Any]], config: EvaluateConfig) -> list[dict[str, Any]]:
    """The configured splits and data sets, in sample_id order, at most ``max_samples`` per data set."""
    kept = sorted(
        (dict(s) for s in samples if s["split"] in config.splits and (config.datasets is None or s["dataset"] in config.datasets)),
        key=lambda s: (s["dataset"], s["sample_id"]),
    )
    if config.max_samples is None:
        return kept
    taken: dict[str, int] = {}
    chosen = []
    for sample in kept:
        if taken.get(sample["dataset"], 0) < config.max_samples:
            taken[sample["dataset"]] = taken.get(sample["dataset"], 0) + 1
            chosen.append(sample)
    return chosen


def generated(sample: Mapping[str, Any]) -> bool:
    """Samples without a reference cannot be scored, so they are not generated either."""
    return bool(sample["answer"].strip())


def skipped(samples: Sequence[Mapping[str, Any]]) -> list[tuple[str | None, str | None]]:
    return [(None, "empty reference")] * len(samples)


def generate_answers(
    model: vlms.VLM, samples: Sequence[Mapping[str, Any]], config: EvaluateConfig, progress: Progress | None = None
) -> list[tuple[str | None, str | None]]:
    """(answer, error) per sample, in order; a sample whose generation fails gets its error, the rest go on."""
    results = skipped(samples)
    todo = [i for i, s in enumerate(samples) if generated(s)]
    done = 0
    for task_kind in ("vqa", "report"):
        indices = [i for i in todo if samples[i]["task"] == task_kind]
        limit = config.report_max_new_tokens if task_kind == "report" else config.max_new_tokens
        for start in range(0, len(indices), config.batch_size):
            batch = indices[start : start + config.batch_size]
            settings = vlms.GenerationSettings(
                max_new_tokens=limit,
                temperature=config.temperature,
                top_p=config.top_p,
                seed=config.seed + start,
                batch_size=len(batch),
            )
            for index, result in zip(batch, generate_batch(model, [samples[i] for i in batch], settings)):
                results[index] = result
            done += len(batch)
            if progress is not None:
                progress(done, len(todo))
    return results


def generate_batch(
    model: vlms.VLM, batch: Sequence[Mapping[str, Any]], settings: vlms.GenerationSettings
) -> list[tuple[str | None, str | None]]:
    """One batched call; when it fails, each sample alone, so one unreadable image fails one row."""
    try:
        answers = vlms.generate(model, [s["question"] for s in batch], [s["image_path"] for s in batch], settings)
        return [(a[0], None) for a in answers]
    except Exception as exc:  # noqa: BLE001 - recorded on the row, or retried per sample
        if len(batch) == 1:
            return [(None, f"{type(exc).__name__}: {exc}")]
    return [generate_batch(model, [sample], settings)[0] for sample in batch]


def prediction_row(
    sample: Mapping[str, Any], prediction: str | None, error: str | None, model: str, adapter: str | None
) -> dict[str, Any]:
    if not generated(sample):
        status = "skipped_empty_reference"
    else:
        status = "ok" if prediction is not None else "failed"
    row = {
        **{k: sample[k] for k in ("sample_id", "dataset", "split", "task", "answer_type", "question", "answer")},
        "prediction": prediction,
        "model": model,
        "adapter": adapter,
        "status": status,
        "error": error if status != "ok" else None,
    }
    if status == "ok":
        row.update(score_answer(sample["answer_type"], prediction or "", sample["answer"]))
    return row


def score_answer(answer_type: str, prediction: str, reference: str) -> dict[str, Any]:
    """The per-sample scores of one answer (corpus BLEU/METEOR are in ``summarize``)."""
    if answer_type == "closed":
        return {
            "closed_correct": metrics.closed_correct(prediction, reference),
            "substring_correct": metrics.substring_correct(prediction, reference),
            "exact_match": metrics.exact_match(prediction, reference),
        }
    if answer_type == "open":
        return {
            "exact_match": metrics.exact_match(prediction, reference),
            "token_recall": metrics.token_recall(prediction, reference),
        }
    return {"rouge_l": metrics.rouge_l([prediction], [reference])}


def summarize(rows: Sequence[Mapping[str, Any]], with_meteor: bool = True) -> dict[str, Any]:
    """Per-data-set metrics. A failed generation counts as an empty answer (wrong), not as absent,
    so a model cannot score higher by crashing on hard samples; skipped rows are left out."""
    datasets: dict[str, dict[str, float | None]] = {}
    errors: dict[str, str] = {}
    for dataset in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == dataset]
        scored = [r for r in mine if r["status"] != "skipped_empty_reference"]
        entry: dict[str, float | None] = {
            "samples": len(mine),
            "failed": sum(r["status"] == "failed" for r in mine),
            "skipped": len(mine) - len(scored),
        }
        by_type = {kind: [r for r in scored if r["answer_type"] == kind] for kind in ("closed", "open", "report")}
        answers = {kind: [(r["prediction"] or "", r["answer"]) for r in group] for kind, group in by_type.items()}
        entry["n_closed"] = len(answers["closed"])
        if answers["closed"]:
            entry["closed_accuracy"] = _mean(metrics.closed_correct(p, a) for p, a in answers["closed"])
            entry["closed_substring_accuracy"] = _mean(metrics.substring_correct(p, a) for p, a in answers["closed"])
            entry["closed_exact_match"] = _mean(metrics.exact_match(p, a) for p, a in answers["closed"])
        entry["n_open"] = len(answers["open"])
        if answers["open"]:
            entry["open_recall"] = _mean(metrics.token_recall(p, a) for p, a in answers["open"])
            entry["open_exact_match"] = _mean(metrics.exact_match(p, a) for p, a in answers["open"])
        entry["n_report"] = len(answers["report"])
        if answers["report"]:
            predictions, references = zip(*answers["report"])
            report = metrics.report_scores(predictions, references, with_meteor=with_meteor)
            entry.update(report.as_dict())
            errors.update({f"{dataset}/{name}": message for name, message in report.errors.items()})
        datasets[dataset] = entry
    return {"datasets": datasets, "errors": errors}


def _mean(values: Iterable[bool | float]) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


def load_metrics(manifest: Manifest) -> dict[str, Any]:
    return json.loads(manifest.file("metrics.json").read_text())


def load_predictions(manifest: Manifest) -> list[dict[str, Any]]:
    return schemas.read_parquet(manifest.file("predictions.parquet"), schemas.PREDICTIONS).to_pylist()


def _count_key(metric: str) -> str:
    """The metrics.json count of the samples a metric averages over."""
    kind = metric.split("_", 1)[0]
    return f"n_{kind}" if kind in ("closed", "open") else "n_report"


def comparison_rows(base: Mapping[str, Any], trained: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """One row per data set and metric present in either evaluation's metrics.json, in percent.

    ``trained`` None gives the base model's numbers alone (trained and delta null).
    """
    rows = []
    base_sets, trained_sets = base["datasets"], (trained or {"datasets": {}})["datasets"]
    for dataset in sorted(set(base_sets) | set(trained_sets)):
        before, after = base_sets.get(dataset, {}), trained_sets.get(dataset, {})
        for metric in METRICS:
            if metric not in before and metric not in after:
                continue
            b, a = _percent(before.get(metric)), _percent(after.get(metric))
            rows.append(
                {
                    "dataset": dataset,
                    "metric": metric,
                    "n": int(before.get(_count_key(metric)) or after.get(_count_key(metric)) or 0),
                    "base": b,
                    "trained": a,
                    "delta": round(a - b, 2) if a is not None and b is not None else None,
                }
            )
    return rows


def _percent(value: float | None) -> float | None:
    return None if value is None else round(100 * value, 2)


def comparison_text(rows: Sequence[Mapping[str, Any]]) -> str:
    """The before/after table as aligned plain text (what `make demo` prints)."""
    header = ("dataset", "metric", "n", "base %", "trained %", "delta")
    cells = [header] + [
        (
            str(r["dataset"]),
            str(r["metric"]),
            str(r["n"]),
            _cell(r["base"]),
            _cell(r["trained"]),
            "" if r["delta"] is None else f"{r['delta']:+.2f}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def example_rows(
    base: Sequence[Mapping[str, Any]], trained: Sequence[Mapping[str, Any]] | None = None, count: int = 10
) -> list[dict[str, Any]]:
    """``count`` samples side by side, taken in turn from each data set (in sample_id order) so
    every data set is shown."""
    after = {r["sample_id"]: r for r in trained or ()}
    per_dataset: dict[str, list[Mapping[str, Any]]] = {}
    for row in sorted(base, key=lambda r: (r["dataset"], r["sample_id"])):
        per_dataset.setdefault(row["dataset"], []).append(row)
    interleaved = [r for group in zip_longest(*per_dataset.values()) for r in group if r is not None]
    chosen = []
    for row in interleaved[:count]:
        other = after.get(row["sample_id"])
        chosen.append(
            {
                "dataset": row["dataset"],
                "sample_id": row["sample_id"],
                "question": row["question"],
                "reference": row["answer"],
                "base": _shown(row),
                **({"trained": _shown(other) if other else "(not evaluated)"} if trained is not None else {}),
            }
        )
    return chosen


def _shown(row: Mapping[str, Any]) -> str:
    if row["status"] != "ok":
        return f"({row['status']}: {row['error']})"
    return row["prediction"] or "(empty)"


def examples_markdown(rows: Sequence[Mapping[str, Any]], max_chars: int = 300) -> str:
    if not rows:
        return "_No evaluated samples._"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_md_cell(str(r[c]), max_chars) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def _md_cell(text: str, max_chars: int) -> str:
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


@task(**stage_task_options(STAGE, CODE))
def evaluate_task(
    store_root: str, config: EvaluateConfig, ingest: Manifest, model: SourceSnapshot, train: Manifest | None = None
) -> Manifest:
    bar: list[ui.Progress] = []

    def progress(done: int, total: int) -> None:
        if not bar:
            bar.append(ui.Progress(STAGE, total))
        bar[0].advance(done - bar[0].done)

    manifest = evaluate(ArtifactStore(store_root), config, ingest, model, train, progress)
    label = "trained" if train is not None else "base"
    ui.manifest_markdown(manifest)
    ui.table(f"evaluate-{label}", comparison_rows(load_metrics(manifest)), f"{label} model metrics (%) per data set")
    return manifest


@task(name="evaluate-compare")
def compare_task(base: Manifest, trained: Manifest | None = None, examples: int = 10) -> list[dict[str, Any]]:
    """Publish the before/after table and example predictions; returns the table's rows."""
    rows = comparison_rows(load_metrics(base), load_metrics(trained) if trained is not None else None)
    ui.table("evaluate-comparison", rows, "Base vs trained model per data set and metric (%)")
    shown = example_rows(load_predictions(base), load_predictions(trained) if trained is not None else None, examples)
    ui.markdown("evaluate-examples", examples_markdown(shown), f"{len(shown)} example predictions side by side")
    return rows
