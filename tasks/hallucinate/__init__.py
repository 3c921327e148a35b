"""Stage 1, hallucination synthesis: a clinically plausible wrong answer per sample."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, get_args

from prefect import task

from models.registry import bind
from tasks import catalog, counters, progress, ui
from tasks.catalog import HALLUCINATIONS, SAMPLES
from tasks.config import ConfigError, HallucinateConfig
from tasks.config.hallucinate import Backend
from tasks.counters import Counters, qualified
from tasks.hallucinate.llm import OnRow, check_images_allowed, llm_rows
from tasks.hallucinate.rows import ORIGINS
from tasks.hallucinate.rules import rules_row
from tasks.hallucinate.target import target_rows
from tasks.store import LLM_TAG, ArtifactStore, Manifest, by_content, code_version, stage_task_options

STAGE = "hallucinate"
CODE = code_version(__name__)


def hallucinate(
    store: ArtifactStore, config: HallucinateConfig, ingest: Manifest, policy: Manifest | None = None
) -> Manifest:
    """A clinically plausible wrong answer (the rejected side of a text pair) per sample.

    Three backends write the same rows: ``rules`` (offline, deterministic, the demo's fast
    path: clinical perturbations of the ground truth, tasks.hallucinate.clinical_rules, one picked per
    sample from a seed and the sample id); ``llm`` (an OpenAI-compatible endpoint injects one
    error into the ground truth, prompt templates in models/prompts/: JSON where the endpoint
    declares structured output, else a few-shot plain-text protocol, tasks/hallucinate/
    fewshot.py; re-asked when a reply is unusable); ``target`` (the paper's procedure: sample the target VLM n times, an
    LLM picks the candidate that most clearly contradicts the ground truth or, when none does,
    rewrites the ground truth into a plausible error). Every rejection must differ from the
    ground truth in content and stay within a length ratio of it (the paper's released
    rejections were ~6x longer than the answers, a shortcut a model learns instead of the
    content). A sample without a valid rejection is a row with status skipped/failed and a
    reason - never a crash, never a fabricated answer. A list of backends is a fallback chain:
    each sample goes to the next backend only when the previous gave it no rejection; the row
    names the backend that produced it and what the earlier ones did (``fallbacks``).

    Each ok row records its ``origin``: the target model's own answer (``target_model``, the
    on-policy rejection the paper wants), an LLM's rewrite of the ground truth
    (``llm_rewrite``) or the ``rules``.

    The target backend samples ``target.model_path``, with ``target.adapter`` merged in when set;
    ``policy`` is the train artifact that adapter belongs to (a round of `mmedpo iterate`): an input,
    so the set's lineage names the model that produced its rejections. ``window`` keeps only a
    window of the samples (a round's).

    Inputs: ``ingest`` (SAMPLES), ``policy`` (train, optional). Output: ``hallucinations.parquet``
    (HALLUCINATIONS). Counters: ``samples.seen``, ``samples.out_of_scope.<split|window>``,
    ``rejections.ok.<error_type>``,
    ``rejections.skipped.<reason>``, ``rejections.failed.<reason>``,
    ``rejections[<dataset>].ok.<origin>``, ``rejections[<dataset>].share.target_model`` (target
    backend: the share of a data set's rejections the target model wrote), ``llm.<client counter>``;
    a chain: ``backend[<name>].<ok|skipped|failed>.<reason>`` for every backend a sample tried and
    ``rejections.share.<backend>`` (the share of the ok rejections each backend produced).
    """
    cache_dir = config.cache_dir or store.root / "llm-cache"
    return store.run(
        STAGE,
        CODE,
        config,
        hallucinate_inputs(config, ingest, policy),
        lambda out: build_hallucinations(out, config, ingest, cache_dir, store),
    )


def hallucinate_inputs(config: HallucinateConfig, ingest: Manifest, policy: Manifest | None) -> dict[str, Manifest]:
    """The stage's inputs; ``policy`` must be the train artifact holding ``target.adapter``."""
    if policy is None:
        return {"ingest": ingest}
    adapter = config.target.adapter
    if adapter is None or not Path(adapter).resolve().is_relative_to(Path(policy.path).resolve()):
        raise ConfigError(
            f"hallucinate.target.adapter {adapter} is not inside the policy's train artifact {policy.path}"
        )
    return {"ingest": ingest, "policy": policy}


# What a rejection depends on: the sample's text and image (by content), and the config's
# identity (tasks.config.identity: not where caches live nor how hard the endpoint is pushed).
ITEM_FIELDS = ("sample_id", "task", "answer_type", "question", "answer", "image_sha256")
SAMPLE_COLUMNS = (*ITEM_FIELDS, "dataset", "split", "image_path")


def build_hallucinations(
    out: Path, config: HallucinateConfig, ingest: Manifest, cache_dir: Path, store: ArtifactStore
) -> dict[str, float]:
    # What an item is and what the backends read of a sample, not its every column (boxes, labels,
    # hashes): those Python rows were most of a re-run's time in this stage.
    samples = catalog.rows(ingest, SAMPLES, SAMPLE_COLUMNS)
    in_split = [s for s in samples if config.splits is None or s["split"] in config.splits]
    window = config.window.select(samples) if config.window is not None else None
    in_scope = [s for s in in_split if window is None or s["sample_id"] in window]
    counts = Counters()
    counts.add("samples", "seen", n=len(samples))
    counts.add("samples", "out_of_scope", "split", n=len(samples) - len(in_split))
    if window is not None:
        counts.add("samples", "out_of_scope", "window", n=len(in_split) - len(in_scope))
    if config.uses_llm:
        check_images_allowed(config)
    # The window says which items a build takes, not what an item is: left out of item keys.
    items = store.items(STAGE, CODE, config, ignore=("window",))
    tags = (LLM_TAG,) if config.uses_llm else ()
    rows = items.build(
        out,
        [items.item(by_content(s, ITEM_FIELDS), s) for s in in_scope],
        partial(hallucinate_items, config, str(cache_dir)),
        tags=tags,
    )
    counts.update({f"llm.{name}": value for name, value in items.counts.items()})
    catalog.write(out, HALLUCINATIONS, rows)
    for row in rows:
        counts.add("rejections", row["status"], row["error_type"] if row["status"] == "ok" else row["reason"])
        if len(config.chain) > 1:
            for tried in [*row["fallbacks"], row]:
                counts.add(qualified("backend", tried["backend"]), tried["status"], tried["reason"])
    ok = [row for row in rows if row["status"] == "ok"]
    if len(config.chain) > 1 and ok:
        for backend in config.chain:
            counts.set("rejections", "share", backend, value=sum(r["backend"] == backend for r in ok) / len(ok))
    for entry in origin_rows(rows, {s["sample_id"]: s["dataset"] for s in in_scope}):
        what = qualified("rejections", entry["dataset"])
        for origin in (o for o in ORIGINS if entry[o]):
            counts.add(what, "ok", origin, n=entry[origin])
        if config.backend == "target":
            counts.set(what, "share", "target_model", value=entry["target_model"] / entry["rejections"])
    return counts.as_dict()


def origin_rows(rows: Sequence[Mapping[str, Any]], datasets: Mapping[str, str]) -> list[dict[str, Any]]:
    """Per data set: ok rejections, how many came from each origin, and the target model's share."""
    table: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row["status"] != "ok":
            continue
        dataset = datasets[row["sample_id"]]
        entry = table.setdefault(dataset, {"dataset": dataset, "rejections": 0} | dict.fromkeys(ORIGINS, 0))
        entry["rejections"] += 1
        entry[row["origin"]] += 1
    return [
        {**entry, "target model %": round(100 * entry["target_model"] / entry["rejections"], 1)}
        for _, entry in sorted(table.items())
    ]


COUNTED_ORIGIN = re.compile(r"rejections\[(?P<dataset>[^\]]+)\]\.ok\.(?P<origin>[^.]+)")


def counted_origins(counts: Mapping[str, float]) -> list[dict[str, Any]]:
    """``origin_rows``' table read back from the counters it wrote (``rejections[<data set>].ok.<origin>``),
    each data set named as its counters name it (tasks.counters.part)."""
    table: dict[str, dict[str, Any]] = {}
    for name, value in counts.items():
        found = COUNTED_ORIGIN.fullmatch(name)
        if found and found["origin"] in ORIGINS:
            dataset = found["dataset"]
            entry = table.setdefault(dataset, {"dataset": dataset, "rejections": 0} | dict.fromkeys(ORIGINS, 0))
            entry["rejections"] += int(value)
            entry[found["origin"]] += int(value)
    return [
        {**entry, "target model %": round(100 * entry["target_model"] / entry["rejections"], 1)}
        for _, entry in sorted(table.items())
    ]


def hallucinate_items(
    config: HallucinateConfig, cache_dir: str, samples: Sequence[Mapping[str, Any]], folders: Sequence[Path]
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """One shard: a HALLUCINATIONS row per sample (the chain's backends tried in turn for the
    samples still without a rejection), and the LLM clients' counters."""
    rows: list[dict[str, Any] | None] = [None] * len(samples)
    used: dict[str, float] = {}
    pending = list(range(len(samples)))
    for position, backend in enumerate(config.chain):
        last = position == len(config.chain) - 1

        def finished(index: int, row: dict[str, Any], last: bool = last) -> None:
            if row["status"] == "ok" or last:  # else the next backend tries it
                progress.tick(STAGE, None if row["status"] == "ok" else row["reason"])

        found, client_counts = backend_rows(backend, [samples[i] for i in pending], config, cache_dir, finished)
        counters.merge(used, client_counts)
        for index, row in zip(pending, found):
            before = rows[index]
            if before is not None:
                earlier = {k: before[k] for k in ("backend", "status", "reason")}
                row = {
                    **row,
                    "attempts": row["attempts"] + before["attempts"],
                    "fallbacks": [*before["fallbacks"], earlier],
                }
            rows[index] = row
        pending = [i for i in pending if rows[i]["status"] != "ok"]  # type: ignore[index]
        if not pending:
            break
    return [row for row in rows if row is not None], used


def backend_rows(
    backend: str, samples: Sequence[Mapping[str, Any]], config: HallucinateConfig, cache_dir: str, on_row: OnRow
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """One backend's row per sample (``on_row(index, row)`` as each finishes), and its client's counters."""
    if backend not in BACKENDS:  # the config's Literal refuses it at load; this guards direct callers
        raise ConfigError(f"hallucinate.backend: unknown backend {backend!r} (known: {', '.join(BACKENDS)})")
    if not samples:
        return [], {}
    return BACKENDS[backend](samples, config, Path(cache_dir), on_row)


def rules_rows(
    samples: Sequence[Mapping[str, Any]], config: HallucinateConfig, cache_dir: Path, on_row: OnRow
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    rows = [rules_row(sample, config) for sample in samples]
    for index, row in enumerate(rows):
        on_row(index, row)
    return rows, {}


BackendRows = Callable[
    [Sequence[Mapping[str, Any]], HallucinateConfig, Path, OnRow], tuple[list[dict[str, Any]], dict[str, int]]
]
BACKENDS: dict[str, BackendRows] = bind(
    "hallucinate backends", get_args(Backend), {"rules": rules_rows, "llm": llm_rows, "target": target_rows}
)


@task(**stage_task_options(STAGE, CODE))
def hallucinate_task(
    store_root: str, config: HallucinateConfig, ingest: Manifest, policy: Manifest | None = None
) -> Manifest:
    manifest = hallucinate(ArtifactStore(store_root), config, ingest, policy)
    ui.manifest_markdown(manifest)
    # The first rows shown, and origins from the counters: every sample's rows as Python objects,
    # made for a table of a few, left the process holding memory that grew with the run.
    shown = ["sample_id", "rejected", "error_type", "backend", "status", "reason"]
    rows = catalog.head(manifest, HALLUCINATIONS, shown, ui.MAX_TABLE_ROWS)
    answers = catalog.values_of(ingest, SAMPLES, [r["sample_id"] for r in rows], "answer")
    ui.table(
        "hallucinate-examples",
        [
            {
                "sample_id": r["sample_id"],
                "answer": answers.get(r["sample_id"], "")[:200],
                "rejected": (r["rejected"] or "")[:200],
                "error_type": r["error_type"],
                "backend": r["backend"],
                "status": r["status"],
                "reason": r["reason"],
            }
            for r in rows
        ],
        "Ground truth vs synthesized hallucination (first rows)",
    )
    ui.table(
        "hallucinate-origins",
        counted_origins(manifest.counts),
        "Where the rejections came from per data set (target_model: the target VLM's own answer, on-policy)",
    )
    return manifest
