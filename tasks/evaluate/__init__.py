"""Stage `evaluate`: answer a test split with a model (optionally + a trained adapter) and score it."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prefect import task

from models import precision
from models import vlm as vlms
from tasks import catalog, metrics, ui
from tasks.catalog import PREDICTIONS, SAMPLES
from tasks.config import EvaluateConfig
from tasks.counters import Counters
from tasks.evaluate.comparison import comparison_rows, example_rows, examples_markdown
from tasks.store import ArtifactStore, Manifest, code_version, stage_task_options, write_text_atomic

log = logging.getLogger(__name__)

STAGE = "evaluate"
CODE = code_version(__name__)
ADAPTER_CONFIG = "adapter_config.json"
BASE_MODEL_FILE = "base_model.txt"  # written by the train stage next to its adapter

Progress = Callable[[int, int], None]  # (samples done, total)


class EvaluateError(ValueError):
    pass


def evaluate(
    store: ArtifactStore,
    config: EvaluateConfig,
    ingest: Manifest,
    train: Manifest | None = None,
    progress: Progress | None = None,
) -> Manifest:
    """Evaluate ``config.model`` (+ the adapter of ``train``) on the ingest artifact's samples.

    The base model's evaluation has no ``train`` input, so it is computed once and reused by
    every training run that compares against it (tasks.evaluate.comparison builds the before/after
    views from two evaluations).

    Inputs: ``ingest`` (SAMPLES), the model folder's content (``config.model`` is identified by
    its files' digests: new weights at the same path re-evaluate, a renamed copy does not),
    ``train`` (the adapter). Output: ``predictions.parquet`` (PREDICTIONS, one row per sample) and
    ``metrics.json`` (per data set: closed accuracy - normalized and the paper's substring
    rule - open recall and exact match, report BLEU-1..4/mean, ROUGE-L, METEOR).
    Counters: ``samples.seen.<closed|open|report>``, ``samples.ok``, ``samples.failed``,
    ``samples.skipped.empty_reference``.
    """
    if config.model is None:
        raise EvaluateError("evaluate.model is unset: resolve it first with resolve_model(config, train)")
    check_model(config.model)
    inputs: dict[str, Any] = {"ingest": ingest}
    if train is not None:
        inputs["train"] = train
    return store.run(STAGE, CODE, config, inputs, lambda out: build_evaluation(out, config, ingest, train, progress))


def check_model(path: Path) -> Path:
    if not (path / "config.json").is_file():
        raise EvaluateError(f"{path}: not a transformers checkpoint folder (no config.json)")
    return path


def adapter_dir(train: Manifest) -> Path:
    """The trained adapter inside a train artifact: the shallowest folder holding a peft adapter."""
    found = sorted(
        (Path(f) for f in train.files if Path(f).name == ADAPTER_CONFIG), key=lambda p: (len(p.parts), str(p))
    )
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
        if Path(f).name == "config.json"
        and Path(f).parent != Path(".")
        and not (root / Path(f).parent / ADAPTER_CONFIG).is_file()
    )
    # Relative: a model inside the artifact; root / an absolute path is that absolute path.
    recorded = [root / (root / BASE_MODEL_FILE).read_text().strip()] if BASE_MODEL_FILE in train.files else []
    peft_record = json.loads((adapter_dir(train) / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    return [*shipped, *map(Path, recorded), *([root / peft_record] if peft_record else [])]


def build_evaluation(
    out: Path, config: EvaluateConfig, ingest: Manifest, train: Manifest | None, progress: Progress | None
) -> dict[str, float]:
    assert config.model is not None
    samples = select_samples(catalog.rows(ingest, SAMPLES), config)
    adapter = train.key if train is not None else None
    answers = skipped(samples)
    if any(generated(s) for s in samples):
        model = vlms.load(
            config.model, device=precision.resolve(config.device, "evaluate"), max_pixels=config.max_pixels
        )
        if train is not None:
            model = vlms.apply_adapter(model, adapter_dir(train))
        answers = generate_answers(model, samples, config, progress)
    rows = [
        prediction_row(s, answer, error, str(config.model), adapter) for s, (answer, error) in zip(samples, answers)
    ]
    reports = report_scores(rows, with_meteor=config.meteor)
    rows = with_report_rouge(rows, reports)
    catalog.write(out, PREDICTIONS, rows)
    summary = summarize(rows, reports)
    summary.update(model=str(config.model), adapter=adapter)
    write_text_atomic(out / "metrics.json", json.dumps(summary, indent=2, sort_keys=True))
    counts = Counters()
    for row in rows:
        counts.add("samples", "seen", row["answer_type"])
        outcome, _, reason = row["status"].partition("_")
        counts.add("samples", outcome, reason or None)
    return counts.as_dict()


def select_samples(samples: Iterable[Mapping[str, Any]], config: EvaluateConfig) -> list[dict[str, Any]]:
    """The configured splits and data sets, in sample_id order, at most ``max_samples`` per data set."""
    kept = sorted(
        (
            dict(s)
            for s in samples
            if s["split"] in config.splits and (config.datasets is None or s["dataset"] in config.datasets)
        ),
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
    """One batched call; when it fails, each sample alone, so one unreadable image fails one row.

    The fallback is logged: a batch that fails for every sample is a bug of the batched path
    (as Gemma 3's flat image list was), not a bad input, and one at a time is much slower.
    """
    try:
        answers = vlms.generate(model, [s["question"] for s in batch], [s["image_path"] for s in batch], settings)
        return [(a[0], None) for a in answers]
    except Exception as exc:  # noqa: BLE001 - recorded on the row, or retried per sample
        if len(batch) == 1:
            return [(None, f"{type(exc).__name__}: {exc}")]
        log.warning("evaluate: a batch of %d failed (%s: %s); retrying per sample", len(batch), type(exc).__name__, exc)
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
    """The per-sample scores of one answer; a report's ROUGE-L comes with its data set's tokenizer
    run (``with_report_rouge``), corpus BLEU/METEOR in ``summarize``."""
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
    return {}


def scored_reports(rows: Sequence[Mapping[str, Any]], dataset: str) -> list[Mapping[str, Any]]:
    """A data set's report rows that count: a failed generation is an empty answer (wrong), not
    absent, so a model cannot score higher by crashing on hard samples; skipped rows are left out."""
    return [
        r
        for r in rows
        if r["dataset"] == dataset and r["answer_type"] == "report" and r["status"] != "skipped_empty_reference"
    ]


def report_scores(rows: Sequence[Mapping[str, Any]], with_meteor: bool = True) -> dict[str, metrics.ReportScores]:
    """Each data set's report metrics (tasks.metrics: one PTB tokenizer run, one METEOR run)."""
    scores = {}
    for dataset in sorted({r["dataset"] for r in rows}):
        reports = scored_reports(rows, dataset)
        if reports:
            predictions = [r["prediction"] or "" for r in reports]
            scores[dataset] = metrics.report_scores(predictions, [r["answer"] for r in reports], with_meteor)
    return scores


def with_report_rouge(
    rows: Sequence[dict[str, Any]], reports: Mapping[str, metrics.ReportScores]
) -> list[dict[str, Any]]:
    """The rows, each answered report with its own ROUGE-L (null when it could not be computed)."""
    each: dict[str, float] = {}
    for dataset, scores in reports.items():
        if scores.rouge_l_each is not None:
            each.update(zip((r["sample_id"] for r in scored_reports(rows, dataset)), scores.rouge_l_each))
    return [
        {**r, "rouge_l": each.get(r["sample_id"])} if r["status"] == "ok" and r["answer_type"] == "report" else r
        for r in rows
    ]


def summarize(rows: Sequence[Mapping[str, Any]], reports: Mapping[str, metrics.ReportScores]) -> dict[str, Any]:
    """Per-data-set metrics; ``reports`` holds the report metrics (``report_scores``). A failed
    generation counts as an empty answer (wrong); skipped rows are left out."""
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
            report = reports[dataset]
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
    return catalog.rows(manifest, PREDICTIONS)


@task(**stage_task_options(STAGE, CODE))
def evaluate_task(store_root: str, config: EvaluateConfig, ingest: Manifest, train: Manifest | None = None) -> Manifest:
    bar: list[ui.Progress] = []

    def progress(done: int, total: int) -> None:
        if not bar:
            bar.append(ui.Progress(STAGE, total))
        bar[0].advance(done - bar[0].done)

    manifest = evaluate(ArtifactStore(store_root), config, ingest, train, progress)
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
