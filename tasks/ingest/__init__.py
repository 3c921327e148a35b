"""Stage `ingest`: data sets in their distributed formats -> one SAMPLES table + rejects."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import get_args

import pyarrow as pa
from prefect import task

from models.registry import bind
from tasks import catalog, ui
from tasks.catalog import REJECTS, SAMPLES
from tasks.config import IngestConfig, SourceConfig, SourceFormat
from tasks.counters import Counters, require_some
from tasks.ingest.checks import Checker, cached_checker, inspect_all
from tasks.ingest.jsonl import read_jsonl
from tasks.ingest.normalize import Normalized, normalize
from tasks.ingest.pathvqa import read_pathvqa
from tasks.ingest.r2gen import read_r2gen
from tasks.ingest.records import IngestError, ReaderOutput
from tasks.ingest.slake import read_slake
from tasks.ingest.vqa_rad import read_vqa_rad
from tasks.store import (
    ArtifactStore,
    Manifest,
    code_version,
    stage_task_options,
)

STAGE = "ingest"
CODE = code_version(__name__)


def ingest(store: ArtifactStore, config: IngestConfig) -> Manifest:
    """Every configured source read by its format's reader, normalized into one table.

    Inputs: the data roots' content (each ``sources[i].root`` is identified by the digests of
    its files, tasks.store.manifest.content_inputs: new or edited files give a new key, touched
    or freshly copied ones do not).
    Output: ``samples.parquet`` (SAMPLES), ``rejects.parquet`` (REJECTS: row + reason) and
    ``images/`` (PNGs rendered from DICOM and from images embedded in Parquet).
    Fails (NothingKept) when no sample is kept.
    Counters: ``samples.kept``, ``samples.rejected.<reason>``, ``samples.skipped.split``,
    ``boxes.dropped.degenerate``, each also per data set (``samples[slake].kept``).
    """
    # The data roots are hashed once a run: the key names the folder the build becomes.
    keyed = store.key(STAGE, CODE, config, {})
    published = store.directory(STAGE, keyed[0])
    return store.run(
        STAGE,
        CODE,
        config,
        {},
        lambda out: build_samples(out, config, published, cached_checker(store, STAGE, config, out)),
        keyed=keyed,
    )


READERS: dict[str, Callable[[Path], ReaderOutput]] = bind(
    "source formats",
    get_args(SourceFormat),
    {
        "slake": read_slake,
        "vqa-rad": read_vqa_rad,
        "r2gen": read_r2gen,
        "pathvqa": read_pathvqa,
        "jsonl": read_jsonl,
    },
)


def build_samples(out: Path, config: IngestConfig, published: Path, check: Checker = inspect_all) -> dict[str, float]:
    """``published``: the folder ``out`` becomes; rendered images are recorded under it."""
    samples: list[pa.Table] = []
    rejects, counts = [], Counters()
    seen: set[str] = set()

    # A string prefix, not Path.is_relative_to (a relative_to per sample): that was a third of an
    # unchanged source's ingest at 16k samples.
    inside = f"{out}{os.sep}"

    def publish_as(path: Path) -> Path:
        return published / path.relative_to(out) if str(path).startswith(inside) else path

    for source in config.sources:
        result = read_source(source, config, out / "images", seen, publish_as, check)
        samples.append(result.samples())
        rejects += result.rejects
        counts.update(result.counts.as_dict())
    require_some(STAGE, counts.as_dict(), "samples.kept", [("samples", "rejected"), ("samples", "skipped")])
    catalog.write(out, SAMPLES, pa.concat_tables(samples))
    catalog.write(out, REJECTS, rejects)
    return counts.as_dict()


def read_source(
    source: SourceConfig,
    config: IngestConfig,
    image_dir: Path,
    seen_ids: set[str],
    publish_as: Callable[[Path], Path] = lambda p: p,
    check: Checker = inspect_all,
) -> Normalized:
    if not source.root.exists():
        raise IngestError(f"{source.root}: data root does not exist (source format {source.format})")
    return normalize(
        READERS[source.format](source.root),
        dataset=dataset_name(source),
        root=source.root,
        image_dir=image_dir,
        config=config,
        splits=source.splits,
        seen_ids=seen_ids,
        publish_as=publish_as,
        check=check,
    )


def dataset_name(source: SourceConfig) -> str:
    return source.dataset


def ingest_to_file(source: SourceConfig, config: IngestConfig, out_file: Path) -> dict[str, float]:
    """`mmedpo ingest`: one data set straight to FILE.parquet + FILE.rejects.parquet."""
    result = read_source(source, config, out_file.with_suffix(".images"), set())
    catalog.write_file(out_file, SAMPLES, result.samples())
    catalog.write_file(out_file.with_suffix(".rejects.parquet"), REJECTS, result.rejects)
    return result.counts.as_dict()


def source_summary_rows(manifest: Manifest) -> list[dict]:
    """One row per data set and outcome (kept / rejected: reason), for the UI."""
    rows = []
    for name, value in sorted(manifest.counts.items()):
        what, _, outcome = name.partition(".")
        if what.startswith("samples[") and value:
            rows.append(
                {"dataset": what[len("samples[") : -1], "outcome": outcome.replace(".", ": "), "rows": int(value)}
            )
    return rows


@task(**stage_task_options(STAGE, CODE))
def ingest_task(store_root: str, config: IngestConfig) -> Manifest:
    # Start and end only: ingestion reads each source whole (not per-sample items).
    progress = ui.Progress(STAGE, len(config.sources))
    manifest = ingest(ArtifactStore(store_root), config)
    progress.advance(len(config.sources))
    ui.table("ingest-sources", source_summary_rows(manifest), "Rows kept and rejected (by reason) per data set")
    ui.manifest_markdown(manifest)
    return manifest
