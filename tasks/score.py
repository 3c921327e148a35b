"""Score stage: how clinically relevant each pair's error is, and the DPO weight that follows.

Text pairs are scored by the judge panel (models.judges: sequential debate or independent
mean); visual pairs by the localizer's confidence. Raw scores become weights through the
configured normalizer, per pair type. Output ``scores.parquet`` (schemas.SCORES), one row per
pair with every debate round recorded.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence, TypeVar

import numpy as np
import pyarrow as pa
from prefect import task

from models import judges
from tasks import schemas, ui
from tasks.config import NormalizerConfig, ScoreConfig, identity
from tasks.store import LLM_TAG, ArtifactStore, Manifest, by_content, code_version, content_hash, stage_task_options

STAGE = "score"
# Prompt templates are not Python, so their text joins the code identity explicitly.
CODE = content_hash(
    code_version(__name__, "models.judges", "models.llm"),
    judges.all_prompt_texts(),
    length=12,
)
OUTPUT = "scores.parquet"
PAIR_TYPES = ("text", "visual")
LLM_CACHE = "llm-cache"

T = TypeVar("T")

SAMPLE_COLUMNS = ("sample_id", "question", "answer", "answer_type")
# The localize stage's REGIONS schema (branch issue3) is not merged here yet: read the columns used, by name.
REGION_COLUMNS = ("sample_id", "status", "reason", "source", "confidence")


def score(store: ArtifactStore, config: ScoreConfig, ingest: Manifest, hallucinate: Manifest, localize: Manifest) -> Manifest:
    cache_dir = store.root / LLM_CACHE
    return store.run(
        STAGE,
        CODE,
        config,
        {"ingest": ingest, "hallucinate": hallucinate, "localize": localize},
        lambda out: build_scores(out, config, ingest, hallucinate, localize, cache_dir, store),
    )


# A text pair's judging depends on its texts and the panel's identity, not on the normalizer:
# weights are computed over the whole batch after gathering.
HALLUCINATION_FIELDS = ("sample_id", "status", "reason", "rejected", "error_type")


def build_scores(out: Path, config: ScoreConfig, ingest: Manifest, hallucinate: Manifest, localize: Manifest, cache_dir: Path | None,
                 store: ArtifactStore) -> dict[str, float]:
    samples = {row["sample_id"]: row for row in schemas.read_parquet(ingest.file("samples.parquet"), schemas.SAMPLES, SAMPLE_COLUMNS).to_pylist()}
    hallucinations = schemas.read_parquet(hallucinate.file("hallucinations.parquet"), schemas.HALLUCINATIONS).to_pylist()
    regions = schemas.read_parquet(localize.file("regions.parquet"), schemas.REGIONS, REGION_COLUMNS).to_pylist()

    items = store.items(STAGE, CODE, {k: v for k, v in identity(config).items() if k != "normalizer"})
    work = []
    for h in hallucinations:
        sample = samples.get(h["sample_id"])
        content = {"hallucination": by_content(h, HALLUCINATION_FIELDS), "sample": sample}
        work.append(items.item(content, (h, sample)))
    tags = (LLM_TAG,) if any(j.kind == "endpoint" for j in config.judges) else ()
    text_rows = items.build(out, work, partial(score_items, config, None if cache_dir is None else str(cache_dir)), tags=tags)
    all_rows = text_rows + [visual_row(r) for r in regions]
    apply_weights(all_rows, config.normalizer)
    schemas.write_parquet(schemas.table(all_rows, schemas.SCORES), out / OUTPUT)
    return counters(all_rows)


def score_items(config: ScoreConfig, cache_dir: str | None, payloads: Sequence[tuple], folders: Sequence[Path]) -> tuple[list[dict[str, Any]], dict]:
    """One shard: a SCORES text row (raw score, no weight yet) per hallucination row."""
    prepared = [text_row_or_skip(h, {} if sample is None else {sample["sample_id"]: sample}) for h, sample in payloads]
    rows = [row for row, _ in prepared]
    pending = [(i, item) for i, (_, item) in enumerate(prepared) if item is not None]
    if pending:
        outcomes = run_async(lambda: judge_items(config, [item for _, item in pending], None if cache_dir is None else Path(cache_dir)))
        for (i, item), outcome in zip(pending, outcomes):
            rows[i] = outcome_row(item, outcome, config.mode)
    return rows, {}


# ---------------------------------------------------------------------------------------------
# Per pair


def text_row_or_skip(hallucination: Mapping[str, Any], samples: Mapping[str, Mapping[str, Any]]) -> tuple[dict[str, Any], judges.JudgeItem | None]:
    """A finished row for pairs that cannot be judged, or a placeholder and the item to judge."""
    sample_id = hallucination["sample_id"]
    base = empty_row(sample_id, "text", error_type=hallucination.get("error_type"))
    status = hallucination.get("status")
    if status != "ok":
        upstream = hallucination.get("reason")
        reason = f"hallucinate_{status}" + (f": {upstream}" if upstream else "")
        return base | {"status": "skipped", "reason": reason}, None
    sample = samples.get(sample_id)
    if sample is None:
        return base | {"status": "failed", "reason": "sample_missing"}, None
    rejected = hallucination.get("rejected")
    if not rejected or not str(rejected).strip():
        return base | {"status": "failed", "reason": "empty_rejected"}, None
    item = judges.JudgeItem(
        sample_id=sample_id,
        question=str(sample["question"]),
        answer=str(sample["answer"]),
        rejected=str(rejected),
        error_type=hallucination.get("error_type"),
        answer_type=sample.get("answer_type"),
    )
    return base, item


async def judge_one(panel: Sequence[judges.Judge], config: ScoreConfig, item: judges.JudgeItem) -> judges.Outcome:
    if config.mode == "mean":
        return await judges.independent_mean(panel, item)
    return await judges.debate(panel, item, max_rounds=config.max_rounds, tolerance=config.agreement_tolerance)


async def judge_items(config: ScoreConfig, items: Sequence[judges.JudgeItem], cache_dir: Path | None) -> list[judges.Outcome]:
    gate = asyncio.Semaphore(config.concurrency)
    async with judges.open_panel(config.judges, config.prompt_version, cache_dir) as panel:

        async def one(item: judges.JudgeItem) -> judges.Outcome:
            async with gate:
                return await judge_one(panel, config, item)

        return list(await asyncio.gather(*(one(item) for item in items)))


def outcome_row(item: judges.JudgeItem, outcome: judges.Outcome, mode: str) -> dict[str, Any]:
    return empty_row(item.sample_id, "text", error_type=item.error_type) | {
        "raw_score": outcome.score,
        "status": outcome.status,
        "reason": outcome.reason,
        "mode": mode,
        "rounds": [
            {"round": t.round, "judge": t.judge, "score": t.score, "reason": t.reason, "adopted": t.adopted, "error": t.error}
            for t in outcome.turns
        ],
        "n_rounds": outcome.scored_rounds,
        "judges_used": outcome.judges_used,
    }


def visual_row(region: Mapping[str, Any]) -> dict[str, Any]:
    """A visual pair's raw score is the localizer's confidence in its region."""
    base = empty_row(region["sample_id"], "visual") | {"mode": "localizer"}
    source = region.get("source")
    if source:
        base["judges_used"] = [f"localizer:{source}"]
    status = region.get("status")
    if status != "ok":
        upstream = region.get("reason")
        return base | {"status": "skipped", "reason": f"localize_{status}" + (f": {upstream}" if upstream else "")}
    confidence = region.get("confidence")
    if confidence is None or not math.isfinite(confidence):
        return base | {"status": "failed", "reason": "no_confidence"}
    if not 0.0 <= confidence <= 1.0:
        return base | {"status": "failed", "reason": f"confidence_out_of_range: {confidence:g}"}
    # regions.parquet stores float32: 0.7 would come back as 0.699999988.
    return base | {"raw_score": round(float(confidence), 6), "status": "ok", "reason": "localizer_confidence"}


def empty_row(sample_id: str, pair_type: str, error_type: str | None = None) -> dict[str, Any]:
    return {
        "sample_id": sample_id,
        "pair_type": pair_type,
        "raw_score": None,
        "weight": None,
        "status": "failed",
        "reason": None,
        "error_type": error_type,
        "mode": None,
        "rounds": [],
        "n_rounds": 0,
        "judges_used": [],
    }


# ---------------------------------------------------------------------------------------------
# Weights


def normalize(scores: Sequence[float], config: NormalizerConfig) -> np.ndarray:
    """Raw scores of one pair type -> weights (NormalizerConfig documents each formula)."""
    s = np.asarray(scores, dtype=np.float64)
    if config.kind == "none":
        return s.copy()
    if config.kind == "paper":
        z = (s - config.mu) / math.sqrt(config.sigma2)
        return np.clip(config.anchor + config.gain * z, config.lo, config.hi)
    if s.size == 0:
        return s.copy()
    std = float(s.std())
    # All-equal scores carry no ranking: every pair gets the middle weight.
    z = (s - s.mean()) / std if std > 1e-12 else np.zeros_like(s)
    mid, half = (config.lo + config.hi) / 2, (config.hi - config.lo) / 2
    return mid + half * np.clip(z, -config.span, config.span) / config.span


def apply_weights(rows: list[dict[str, Any]], config: NormalizerConfig) -> None:
    for pair_type in PAIR_TYPES:
        scored = [row for row in rows if row["pair_type"] == pair_type and row["status"] == "ok"]
        weights = normalize([row["raw_score"] for row in scored], config)
        for row, weight in zip(scored, weights):
            row["weight"] = round(float(weight), 6)


def distribution(values: Iterable[float]) -> dict[str, float]:
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return {}
    q25, q50, q75 = np.quantile(v, [0.25, 0.5, 0.75])
    return {"mean": float(v.mean()), "std": float(v.std()), "min": float(v.min()), "p25": float(q25), "median": float(q50), "p75": float(q75), "max": float(v.max())}


def counters(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for row in rows:
        prefix = row["pair_type"]
        counts[f"{prefix}_{row['status']}"] = counts.get(f"{prefix}_{row['status']}", 0) + 1
        # ok rows count how the score was reached; others why there is none (before any ': detail').
        key = f"{prefix}_{row['status']}_{str(row['reason']).split(':')[0]}"
        counts[key] = counts.get(key, 0) + 1
        for turn in row["rounds"]:
            if turn["error"]:
                key = f"judge_{turn['judge']}_excluded_{turn['error']}"
                counts[key] = counts.get(key, 0) + 1
    for pair_type in PAIR_TYPES:
        ok = [row for row in rows if row["pair_type"] == pair_type and row["status"] == "ok"]
        for column, short in (("raw_score", "raw"), ("weight", "weight")):
            for stat, value in distribution(row[column] for row in ok).items():
                counts[f"{pair_type}_{short}_{stat}"] = round(value, 6)
    return counts


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine from this synchronous stage, also when called inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())  # type: ignore[arg-type]
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# What the Prefect UI shows (plain functions of the scores table, unit-tested)


def histogram_png(data: pa.Table) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data.to_pylist() if r["status"] == "ok"]
    figure, axes = plt.subplots(2, 2, figsize=(9, 6), squeeze=False)
    for i, pair_type in enumerate(PAIR_TYPES):
        for j, (column, title) in enumerate((("raw_score", "raw score"), ("weight", "weight"))):
            values = [r[column] for r in rows if r["pair_type"] == pair_type]
            ax = axes[i][j]
            ax.hist(values, bins=20, color="tab:blue" if j == 0 else "tab:orange")
            ax.set_title(f"{pair_type} pairs: {title} (n={len(values)})")
    figure.tight_layout()
    try:
        return ui.figure_png(figure)
    finally:
        plt.close(figure)


def judge_agreement(data: pa.Table) -> list[dict[str, Any]]:
    """Per judge: samples scored, mean of its own first score per sample, adoptions, exclusions,
    and Pearson r with every other judge over the samples both scored (None below 2 or without variance)."""
    first: dict[str, dict[str, float]] = {}
    adopted: dict[str, int] = {}
    excluded: dict[str, int] = {}
    for row in data.to_pylist():
        if row["pair_type"] != "text":
            continue
        for turn in row["rounds"] or []:
            name = turn["judge"]
            first.setdefault(name, {})
            adopted.setdefault(name, 0)
            excluded.setdefault(name, 0)
            if turn["error"]:
                excluded[name] += 1
            elif turn["adopted"]:
                adopted[name] += 1
            elif row["sample_id"] not in first[name]:
                first[name][row["sample_id"]] = turn["score"]
    names = sorted(first)
    table = []
    for name in names:
        own = first[name]
        entry: dict[str, Any] = {
            "judge": name,
            "samples_scored": len(own),
            "mean_score": round(float(np.mean(list(own.values()))), 4) if own else None,
            "adoptions": adopted[name],
            "exclusions": excluded[name],
        }
        for other in names:
            if other != name:
                entry[f"r_{other}"] = _pearson(own, first[other])
        table.append(entry)
    return table


def _pearson(a: Mapping[str, float], b: Mapping[str, float]) -> float | None:
    common = sorted(set(a) & set(b))
    if len(common) < 2:
        return None
    x = np.array([a[k] for k in common])
    y = np.array([b[k] for k in common])
    if x.std() < 1e-12 or y.std() < 1e-12:
        return None
    return round(float(np.corrcoef(x, y)[0, 1]), 4)


def rounds_used(data: pa.Table) -> list[dict[str, Any]]:
    """How many scored rounds text pairs took, and how each ended."""
    tally: dict[tuple[int, str], int] = {}
    for row in data.to_pylist():
        if row["pair_type"] == "text" and row["status"] == "ok":
            key = (row["n_rounds"], str(row["reason"]))
            tally[key] = tally.get(key, 0) + 1
    return [{"rounds": n, "ended": reason, "pairs": count} for (n, reason), count in sorted(tally.items())]


def extremes(data: pa.Table, n: int = 10) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The n highest and n lowest raw scores (ties broken by sample id), with the deciding reason."""
    rows = [r for r in data.to_pylist() if r["status"] == "ok"]
    rows.sort(key=lambda r: (r["raw_score"], r["sample_id"], r["pair_type"]))

    def show(r: Mapping[str, Any]) -> dict[str, Any]:
        scored = [t for t in r["rounds"] or [] if not t["error"]]
        return {
            "sample_id": r["sample_id"],
            "pair_type": r["pair_type"],
            "raw_score": r["raw_score"],
            "weight": r["weight"],
            "error_type": r["error_type"],
            "why": (scored[-1]["reason"] if scored else r["reason"])[:160],
        }

    return [show(r) for r in reversed(rows[-n:])], [show(r) for r in rows[:n]]


def stats_rows(counts: Mapping[str, float]) -> list[dict[str, Any]]:
    rows = []
    for pair_type in PAIR_TYPES:
        for short in ("raw", "weight"):
            prefix = f"{pair_type}_{short}_"
            stats = {k[len(prefix) :]: v for k, v in counts.items() if k.startswith(prefix)}
            if stats:
                rows.append({"pair_type": pair_type, "value": short, **stats})
    return rows


@task(**stage_task_options(STAGE, CODE))
def score_task(store_root: str, config: ScoreConfig, ingest: Manifest, hallucinate: Manifest, localize: Manifest) -> Manifest:
    manifest = score(ArtifactStore(store_root), config, ingest, hallucinate, localize)
    data = schemas.read_parquet(manifest.file(OUTPUT), schemas.SCORES)
    ui.manifest_markdown(manifest)
    ui.table("score-distribution", stats_rows(manifest.counts), "Raw scores and weights per pair type")
    ui.image("score-histogram", histogram_png(data), "Raw clinical-relevance scores and DPO weights")
    ui.table("score-judges", judge_agreement(data), "Judge agreement: mean score, adoptions, exclusions, pairwise r")
    ui.table("score-rounds", rounds_used(data), "Debate rounds used per text pair")
    highest, lowest = extremes(data)
    ui.table("score-highest", highest, "The 10 most clinically relevant pairs")
    ui.table("score-lowest", lowest, "The 10 least clinically relevant pairs")
    return manifest
