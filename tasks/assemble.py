"""Stage `assemble`: samples + hallucinations + regions/noised images + weights -> the preference set."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks import catalog, counters, ui
from tasks.card import data_card
from tasks.catalog import DROPPED, HALLUCINATIONS, NOISED, PAIRS, REGIONS, SAMPLES, SCORES
from tasks.config import AssembleConfig
from tasks.counters import Counters, require_some
from tasks.rounds import origin_table, rejection_source
from tasks.set_images import ImageLinker
from tasks.sets import publish
from tasks.store import (
    ArtifactStore,
    Manifest,
    code_version,
    stage_task_options,
    write_text_atomic,
)

STAGE = "assemble"
CODE = code_version(__name__)
BATCH_SAMPLES = 2048  # samples made Python objects at a time


def assemble(
    store: ArtifactStore,
    config: AssembleConfig,
    ingest: Manifest,
    localize: Manifest,
    noise: Manifest,
    hallucinate: Manifest,
    score: Manifest,
    previous: Path | None = None,
) -> Manifest:
    """The preference set: a text pair (ground truth vs hallucination) and a visual pair
    (original vs lesion-noised image, same answer) per training sample, each with its weight.

    The set is self-contained: its images are linked (or copied) into the set's folder, so a
    set can be moved to a GPU machine alone (layout in tasks/sets.py). Pairs whose image is a
    test-split image (same file, or a re-encoded or resized copy) are left out. Its version is
    its content digest (pairs, weights, images): identical pairs are one version however they
    were produced; lineage (every upstream key) is in its manifest. Its card says who wrote the
    rejections (tasks.rounds: the backend; for ``target`` the sampled model's and adapter's content
    digests, the train artifact and the `mmedpo iterate` round). ``window`` keeps only a window of
    the samples (a round's). ``previous``: the images folder of the set's last published version,
    whose unchanged data-root images the new version links instead of copying them again.

    Inputs: every curation stage. Output: ``data/<split>-00000-of-00001.parquet`` (PAIRS),
    ``dropped.parquet`` (DROPPED: every sample or pair left out, with its reason), ``CARD.md``
    (counts, length statistics, weight histogram, examples) and ``images/``.
    Counters: ``pairs.built.<text|visual>``, ``<text|visual>.dropped.<reason>``,
    ``samples.dropped.<leak reason>``, ``samples.held_out.test``, ``samples.out_of_scope.window``,
    ``images.linked``, ``policy.round`` (target backend: the round whose model wrote the rejections).
    Fails (NothingKept) when no pair is built: an empty set is never published.
    """
    inputs = {"ingest": ingest, "localize": localize, "noise": noise, "hallucinate": hallucinate, "score": score}
    # The card documents the version (lineage, who wrote the rejections); the pairs, weights and
    # images are the version: identical pairs are one version however they were produced.
    return store.run(
        STAGE, CODE, config, inputs, lambda out: build_set(out, config, inputs, previous), volatile=("CARD.md",)
    )


def build_set(
    out: Path, config: AssembleConfig, inputs: dict[str, Manifest], previous: Path | None = None
) -> dict[str, float]:
    # Only the columns a pair is made of, and as Python objects a batch of samples at a time:
    # every sample's rows of every stage held as Python objects made this stage the run's peak memory.
    samples = catalog.read(inputs["ingest"], SAMPLES, SAMPLE_COLUMNS)
    window = None
    if config.window is not None:
        window = config.window.select(samples.select(["sample_id", "split"]).to_pylist())
    hallucinations = catalog.read(inputs["hallucinate"], HALLUCINATIONS, HALLUCINATION_COLUMNS)
    noised = catalog.read(inputs["noise"], NOISED, NOISED_COLUMNS)
    regions = catalog.read(inputs["localize"], REGIONS, REGION_COLUMNS)
    scores = catalog.read(inputs["score"], SCORES, SCORE_COLUMNS)
    text_scores, visual_scores = (scores.filter(pc.equal(scores.column("pair_type"), t)) for t in ("text", "visual"))
    noise_dir = inputs["noise"].path

    test = samples.filter(pc.is_in(samples.column("split"), value_set=pa.array(config.test_splits, pa.string())))
    leaks = LeakageIndex(test.to_pylist(), config.near_duplicate_bits)
    linker = ImageLinker(out / "images", out.parent.parent, previous)  # out: <store>/assemble/<temporary folder>
    # Pairs become Arrow a batch at a time: every pair as a Python dict (~0.9 KB) held to the end
    # was the stage's peak memory.
    batches: list[pa.Table] = [PAIRS.schema.empty_table()]
    dropped: list[dict[str, Any]] = []
    counts = Counters()

    def drop(sample: dict, pair_type: str | None, reason: str, detail: str | None = None) -> None:
        dropped.append({"sample_id": sample["sample_id"], "pair_type": pair_type, "reason": reason, "detail": detail})
        counts.add(pair_type or "samples", "dropped", reason)

    # Each sample's row number in every upstream table (null where none), found once for the set:
    # found per batch, each table's ids were hashed again for every batch.
    ids = samples.column("sample_id")
    upstream = [
        (data, pc.index_in(ids, value_set=data.column("sample_id")))
        for data in (hallucinations, noised, regions, text_scores, visual_scores)
    ]
    for start in range(0, samples.num_rows, BATCH_SAMPLES):
        pairs: list[dict[str, Any]] = []
        joined = zip(
            samples.slice(start, BATCH_SAMPLES).to_pylist(),
            *(rows_at(data, positions.slice(start, BATCH_SAMPLES)) for data, positions in upstream),
        )
        for sample, hallucination, noised_row, region, text_score, visual_score in joined:
            if sample["split"] in config.test_splits:
                counts.add("samples", "held_out", sample["split"])
                continue
            if window is not None and sample["sample_id"] not in window:
                counts.add("samples", "out_of_scope", "window")
                continue
            leak = leaks.match(sample)
            if leak:
                drop(sample, None, leak, "matches a test-split sample")
                continue
            base = {
                "sample_id": sample["sample_id"],
                "prompt": sample["question"],
                "chosen": sample["answer"],
                "dataset": sample["dataset"],
                "split": sample["split"],
                "task": sample["task"],
                "answer_type": sample["answer_type"],
            }
            if config.text_pairs:
                pair = _text_pair(sample, hallucination, text_score)
                if isinstance(pair, str):
                    drop(sample, "text", pair)
                else:
                    image = linker.link(sample["image_path"])
                    pairs.append({**base, **pair, "chosen_image": image, "rejected_image": image})
            if config.visual_pairs:
                pair = _visual_pair(sample, region, noised_row, visual_score)
                if isinstance(pair, str):
                    # The region's own reason (no_lesion_label, no_annotation, ...) says why there was none.
                    drop(sample, "visual", pair, region["reason"] if region and region["status"] != "ok" else None)
                else:
                    rejected_image = linker.link(os.path.join(noise_dir, pair.pop("noised_path")))
                    pairs.append(
                        {
                            **base,
                            **pair,
                            "rejected": sample["answer"],
                            "chosen_image": linker.link(sample["image_path"]),
                            "rejected_image": rejected_image,
                        }
                    )
        batches.append(catalog.table(pairs, PAIRS))

    built = pa.concat_tables(batches)
    built = built.take(pc.sort_indices(built, [("pair_id", "ascending")]))
    for split in sorted(pc.unique(built.column("split")).to_pylist()):
        catalog.write(out, PAIRS, built.filter(pc.equal(built.column("split"), split)), split=split)
    catalog.write(out, DROPPED, dropped)
    counts.add("pairs", "built", n=0)  # present when empty too: `mmedpo sets list` reads it
    for pair_type, n in zip(*pc.value_counts(built.column("pair_type")).flatten()):
        counts.add("pairs", "built", pair_type.as_py(), n=n.as_py())
    counts.add("images", "linked", n=linker.count)
    losses = [("text", "dropped"), ("visual", "dropped"), ("samples", "dropped"), ("samples", "held_out")]
    require_some(STAGE, counts.as_dict(), "pairs.built", losses + [("samples", "out_of_scope")])
    source = rejection_source(inputs["hallucinate"])
    if source.backend == "target" and source.round is not None:
        counts.set("policy", "round", value=source.round)
    rejections = f"{source.sentence()}\n\n{origin_table(built, hallucinations)}"
    write_text_atomic(out / "CARD.md", data_card(built, dropped, rejections))
    return counts.as_dict()


SAMPLE_COLUMNS = (
    "sample_id",
    "dataset",
    "split",
    "task",
    "question",
    "answer",
    "answer_type",
    "image_path",
    "image_sha256",
    "image_phash",
)
HALLUCINATION_COLUMNS = ("sample_id", "status", "rejected", "error_type", "origin")
NOISED_COLUMNS = ("sample_id", "status", "mode", "noised_path")
REGION_COLUMNS = ("sample_id", "status", "reason")
SCORE_COLUMNS = ("sample_id", "pair_type", "status", "raw_score", "weight")


def rows_at(data: pa.Table, positions: pa.ChunkedArray) -> list[dict[str, Any] | None]:
    """The rows of ``data`` at ``positions`` as Python rows (None at a null position)."""
    found = pc.is_valid(positions).to_pylist()
    return [row if ok else None for row, ok in zip(data.take(positions).to_pylist(), found)]


def _text_pair(sample: dict, hallucination: dict | None, score: dict | None) -> dict | str:
    """The pair's columns, or the reason there is none."""
    if hallucination is None:
        return "no_hallucination_row"
    if hallucination["status"] != "ok":
        return f"hallucination_{hallucination['status']}"
    if score is None or score["status"] != "ok":
        return "text_score_missing" if score is None else f"text_score_{score['status']}"
    return {
        "pair_id": f"{sample['sample_id']}#text",
        "pair_type": "text",
        "rejected": hallucination["rejected"],
        "raw_score": score["raw_score"],
        "weight": score["weight"],
        "error_type": hallucination["error_type"],
    }


def _visual_pair(sample: dict, region: dict | None, noised: dict | None, score: dict | None) -> dict | str:
    if region is None or region["status"] != "ok":
        return "no_region" if region is None else f"region_{region['status']}"
    if noised is None or noised["status"] != "ok":
        return "not_noised" if noised is None else f"noise_{noised['status']}"
    if score is None or score["status"] != "ok":
        return "visual_score_missing" if score is None else f"visual_score_{score['status']}"
    return {
        "pair_id": f"{sample['sample_id']}#visual",
        "pair_type": "visual",
        "raw_score": score["raw_score"],
        "weight": score["weight"],
        "error_type": f"lesion_noise_{noised['mode']}",
        "noised_path": noised["noised_path"],
    }


PHASH_BYTES = 32  # imaging.average_hash: 16 x 16 bits


class LeakageIndex:
    """Test-split images by exact hash and by perceptual hash (re-encoded or resized copies)."""

    def __init__(self, test_samples: list[dict], near_duplicate_bits: int | None):
        self.sha = {s["image_sha256"] for s in test_samples}
        self.questions = {(normalize_question(s["question"]), s["image_phash"]) for s in test_samples}
        self.max_bits = near_duplicate_bits
        self.phashes = _bits([s["image_phash"] for s in test_samples])

    def match(self, sample: dict) -> str | None:
        if sample["image_sha256"] in self.sha:
            return "leak_test_image"
        if (normalize_question(sample["question"]), sample["image_phash"]) in self.questions:
            return "leak_test_question_image"
        if self.max_bits is not None and len(self.phashes):
            distance = np.bitwise_count(self.phashes ^ _bits([sample["image_phash"]])).sum(axis=1).min()
            if distance <= self.max_bits:
                return "leak_test_near_duplicate_image"
        return None


def _bits(hashes: list[str]) -> np.ndarray:
    return np.array([np.frombuffer(bytes.fromhex(h), dtype=np.uint8) for h in hashes], dtype=np.uint8).reshape(
        len(hashes), PHASH_BYTES
    )


def normalize_question(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@task(**stage_task_options(STAGE, CODE))
def assemble_task(
    store_root: str,
    config: AssembleConfig,
    ingest: Manifest,
    localize: Manifest,
    noise: Manifest,
    hallucinate: Manifest,
    score: Manifest,
    previous: str | None = None,
) -> Manifest:
    """``previous``: the images folder of the set's last published version (tasks.sets.latest_images)."""
    progress = ui.Progress(STAGE, 1)  # start and end only: assembly is one step over the whole set
    reuse = Path(previous) if previous else None
    manifest = assemble(ArtifactStore(store_root), config, ingest, localize, noise, hallucinate, score, reuse)
    progress.advance()
    ui.table("assemble-counts", counters.rows(manifest.counts), f"Preference set version {manifest.digest}")
    ui.markdown(
        "assemble-card", Path(manifest.path, "CARD.md").read_text(), f"Data card of set version {manifest.digest}"
    )
    ui.manifest_markdown(manifest)
    return manifest


@task(name="publish-set", cache_policy=NO_CACHE)
def publish_task(manifest: Manifest, sets_root: str, name: str) -> str:
    """Not cached: re-publishing is an idempotent check, and it restores a deleted set."""
    return str(publish(manifest, Path(sets_root), name))
