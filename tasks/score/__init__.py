"""Stage score: how clinically relevant each pair's error is, and the DPO weight that follows."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from prefect import task

from models import judges
from models import panel as panels
from models.llm import LLMClient, run_sync
from tasks import catalog, progress, ui
from tasks.catalog import HALLUCINATIONS, REGIONS, SAMPLES, SCORES
from tasks.config import ScoreConfig
from tasks.counters import Counters, qualified
from tasks.score.views import STATISTICS, extremes, histogram_png, judge_agreement, rounds_used, stats_rows
from tasks.score.weighting import (
    PAIR_TYPES,
    apply_weights,
    bound_shares,
    collapse_alerts,
    collapse_notes,
    distribution,
)
from tasks.store import LLM_TAG, ArtifactStore, Manifest, by_content, code_version, stage_task_options

STAGE = "score"
CODE = code_version(__name__)
LLM_CACHE = "llm-cache"
SAMPLE_COLUMNS = ("sample_id", "question", "answer", "answer_type")
REGION_COLUMNS = ("sample_id", "status", "reason", "source", "confidence")
VISUAL_BATCH = 2048  # regions made Python rows at a time


def score(
    store: ArtifactStore, config: ScoreConfig, ingest: Manifest, hallucinate: Manifest, localize: Manifest
) -> Manifest:
    """How clinically relevant each pair's error is, and the DPO weight that follows.

    Text pairs are scored by the judge panel (models.panel: sequential debate or independent
    mean); visual pairs by the localizer's confidence. Raw scores become weights through the
    configured normalizer, per pair type.

    Inputs: ``ingest`` (SAMPLES), ``hallucinate`` (HALLUCINATIONS), ``localize`` (REGIONS).
    Output: ``scores.parquet`` (SCORES: one row per pair, every debate round recorded).
    Counters: ``<text|visual>.<ok|skipped|failed>.<reason>``, ``judge[<name>].excluded.<error>``,
    ``judge[<name>].llm.<requests|cache_hits|retries|errors|refused>`` (endpoint judges, this run),
    and the distributions ``<text|visual>.<raw_score|weight>.<mean|std|min|p25|median|p75|max>``.
    """
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


def build_scores(
    out: Path,
    config: ScoreConfig,
    ingest: Manifest,
    hallucinate: Manifest,
    localize: Manifest,
    cache_dir: Path | None,
    store: ArtifactStore,
) -> dict[str, float]:
    samples = {row["sample_id"]: row for row in catalog.rows(ingest, SAMPLES, SAMPLE_COLUMNS)}
    hallucinations = catalog.rows(hallucinate, HALLUCINATIONS, HALLUCINATION_FIELDS)

    items = store.items(STAGE, CODE, config, ignore=("normalizer", "visual_normalizer"))
    work = []
    for h in hallucinations:
        sample = samples.get(h["sample_id"])
        content = {"hallucination": by_content(h, HALLUCINATION_FIELDS), "sample": sample}
        work.append(items.item(content, (h, sample)))
    tags = (LLM_TAG,) if any(j.kind == "endpoint" for j in config.judges) else ()
    compute = partial(score_items, config, None if cache_dir is None else str(cache_dir))
    # The rows as Arrow, never all of them as Python objects: those were the stage's peak memory.
    text = items.build_table(out, work, compute, SCORES.schema, tags=tags)
    del work, samples, hallucinations
    data = apply_weights(
        pa.concat_tables([text, visual_table(catalog.read(localize, REGIONS, REGION_COLUMNS))]),
        config.normalizer,
        config.visual_normalizer,
    )
    catalog.write(out, SCORES, data)
    return counters(data, config) | items.counts


def score_items(
    config: ScoreConfig, cache_dir: str | None, payloads: Sequence[tuple], folders: Sequence[Path]
) -> tuple[list[dict[str, Any]], dict]:
    """One shard: a SCORES text row (raw score, no weight yet) per hallucination row."""
    prepared = [text_row_or_skip(h, {} if sample is None else {sample["sample_id"]: sample}) for h, sample in payloads]
    rows = [row for row, _ in prepared]
    pending = [(i, item) for i, (_, item) in enumerate(prepared) if item is not None]
    for row, item in prepared:
        if item is None:  # nothing to judge: done already
            progress.tick(STAGE, None if row["status"] == "ok" else row["reason"])
    if not pending:
        return rows, {}
    outcomes, client_counts = run_sync(
        lambda: judge_items(config, [item for _, item in pending], None if cache_dir is None else Path(cache_dir))
    )
    for (i, item), outcome in zip(pending, outcomes):
        rows[i] = outcome_row(item, outcome, config.mode)
    return rows, client_counts


# ---------------------------------------------------------------------------------------------
# Per pair


def text_row_or_skip(
    hallucination: Mapping[str, Any], samples: Mapping[str, Mapping[str, Any]]
) -> tuple[dict[str, Any], judges.JudgeItem | None]:
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
        return await panels.independent_mean(panel, item)
    return await panels.debate(panel, item, max_rounds=config.max_rounds, tolerance=config.agreement_tolerance)


async def judge_items(
    config: ScoreConfig, items: Sequence[judges.JudgeItem], cache_dir: Path | None
) -> tuple[list[judges.Outcome], dict[str, float]]:
    """Each item's outcome, and the endpoint judges' request counters (``judge[<name>].llm.<counter>``)."""
    gate = asyncio.Semaphore(config.concurrency)
    clients: dict[str, LLMClient] = {}
    async with panels.open_panel(config.judges, config.prompt_version, cache_dir, clients) as panel:

        async def one(item: judges.JudgeItem) -> judges.Outcome:
            async with gate:
                outcome = await judge_one(panel, config, item)
            progress.tick(STAGE, None if outcome.status == "ok" else outcome.reason)
            return outcome

        outcomes = list(await asyncio.gather(*(one(item) for item in items)))
    client_counts = {
        f"{qualified('judge', name)}.llm.{counter}": value
        for name, client in clients.items()
        for counter, value in client.counts.items()
    }
    return outcomes, client_counts


def outcome_row(item: judges.JudgeItem, outcome: judges.Outcome, mode: str) -> dict[str, Any]:
    return empty_row(item.sample_id, "text", error_type=item.error_type) | {
        "raw_score": outcome.score,
        "status": outcome.status,
        "reason": outcome.reason,
        "mode": mode,
        "rounds": [
            {
                "round": t.round,
                "judge": t.judge,
                "score": t.score,
                "reason": t.reason,
                "adopted": t.adopted,
                "error": t.error,
                "distribution": [{"value": value, "p": round(p, 6)} for value, p in t.distribution],
                "source": t.source,
                "mass": None if t.mass is None else round(t.mass, 6),
            }
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


def visual_table(regions: pa.Table) -> pa.Table:
    """``visual_row`` of every region, made Python rows a batch at a time."""
    return pa.concat_tables(
        [SCORES.schema.empty_table()]
        + [catalog.table(map(visual_row, batch.to_pylist()), SCORES) for batch in regions.to_batches(VISUAL_BATCH)]
    )


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


def counters(data: pa.Table, config: ScoreConfig) -> dict[str, float]:
    """The stage's counters from its table's columns (the rows as Python objects cost more than the table)."""
    counts = Counters()
    # ok rows count how the score was reached; others why there is none (before any ': detail').
    reasons = pc.list_element(pc.split_pattern(pc.fill_null(data.column("reason"), "None"), ":", max_splits=1), 0)
    outcomes = pa.table({"pair_type": data.column("pair_type"), "status": data.column("status"), "reason": reasons})
    for row in outcomes.group_by(["pair_type", "status", "reason"]).aggregate([([], "count_all")]).to_pylist():
        counts.add(row["pair_type"], row["status"], row["reason"], n=row["count_all"])
    turns = pc.list_flatten(data.column("rounds"))
    excluded = pa.table({"judge": pc.struct_field(turns, "judge"), "error": pc.struct_field(turns, "error")})
    excluded = excluded.filter(pc.fill_null(pc.not_equal(excluded.column("error"), ""), False))
    for row in excluded.group_by(["judge", "error"]).aggregate([([], "count_all")]).to_pylist():
        counts.add(qualified("judge", row["judge"]), "excluded", row["error"], n=row["count_all"])
    ok = pc.equal(data.column("status"), "ok")
    for pair_type in PAIR_TYPES:
        scored = data.filter(pc.and_(ok, pc.equal(data.column("pair_type"), pair_type)))
        for column in STATISTICS:
            for stat, value in distribution(scored.column(column).to_numpy()).items():
                counts.set(pair_type, column, stat, round(value, 6))
        mapping = config.visual_normalizer if pair_type == "visual" and config.visual_normalizer else config.normalizer
        for bound, share in bound_shares(scored.column("weight").to_numpy(), mapping).items():
            counts.set(pair_type, "weight", bound, round(share, 6))
    return counts.as_dict()


@task(**stage_task_options(STAGE, CODE))
def score_task(
    store_root: str, config: ScoreConfig, ingest: Manifest, hallucinate: Manifest, localize: Manifest
) -> Manifest:
    manifest = score(ArtifactStore(store_root), config, ingest, hallucinate, localize)
    data = catalog.read(manifest, SCORES)
    ui.manifest_markdown(manifest)
    ui.alert(STAGE, collapse_alerts(manifest.counts))
    ui.alert(STAGE, collapse_notes(manifest.counts), note=True)
    ui.table("score-distribution", stats_rows(manifest.counts), "Raw scores and weights per pair type")
    ui.image("score-histogram", histogram_png(data), "Raw clinical-relevance scores and DPO weights")
    ui.table("score-judges", judge_agreement(data), "Judge agreement: mean score, adoptions, exclusions, pairwise r")
    ui.table("score-rounds", rounds_used(data), "Debate rounds used per text pair")
    highest, lowest = extremes(data)
    ui.table("score-highest", highest, "The 10 most clinically relevant pairs")
    ui.table("score-lowest", lowest, "The 10 least clinically relevant pairs")
    return manifest
