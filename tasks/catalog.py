"""Every artifact file, declared once in DAG order: its name inside the artifact and its
Arrow schema.

Stages write through ``write(out, ARTIFACT, rows)`` - a missing or mistyped column fails
where it is produced, not three stages later - and read through ``read(manifest, ARTIFACT)``
or ``rows(manifest, ARTIFACT)``, which check that the columns a consumer relies on are there
with the declared types. ``SCHEMA_VERSION`` goes into each schema's metadata; bump it when a
column changes meaning. File paths inside localize, noise and assemble artifacts are
relative to the artifact's own folder: the folder is renamed into place after it is written,
so absolute paths would go stale.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.store import Manifest, replacing

SCHEMA_VERSION = "1"

BOX = pa.list_(pa.float32(), 4)


@dataclass(frozen=True)
class Artifact:
    """One file of a stage's artifact: where it lies in the artifact folder, what it holds."""

    file: str
    schema: pa.Schema

    @property
    def name(self) -> str:
        return self.schema.metadata[b"artifact"].decode()


# --- ingest ------------------------------------------------------------------------------------

# The label of a box its source gave none (the generic JSONL's boxes without box_labels): the
# user's own declared lesion, which localize always keeps as one.
UNLABELED_BOX = "lesion"

SAMPLES = Artifact(
    "samples.parquet",
    pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),  # vqa | report
            pa.field("image_path", pa.string(), nullable=False),  # absolute
            pa.field("image_sha256", pa.string(), nullable=False),
            pa.field("image_phash", pa.string(), nullable=False),  # imaging.average_hash, for near-duplicate leakage
            pa.field("width", pa.int32(), nullable=False),
            pa.field("height", pa.int32(), nullable=False),
            pa.field("modality", pa.string()),
            pa.field("question", pa.string(), nullable=False),
            pa.field("answer", pa.string(), nullable=False),
            pa.field("answer_type", pa.string(), nullable=False),  # closed | open | report
            pa.field("boxes", pa.list_(BOX), nullable=False),  # [x0, y0, x1, y1] pixels
            pa.field("box_labels", pa.list_(pa.string()), nullable=False),  # one per box; UNLABELED_BOX if none
            pa.field("mask_path", pa.string()),
            pa.field("other_images", pa.list_(pa.string()), nullable=False),  # further views of a study
            pa.field("language", pa.string()),
            pa.field("source_ref", pa.string(), nullable=False),  # file#record
        ],
        metadata={"artifact": "samples", "schema_version": SCHEMA_VERSION},
    ),
)

REJECTS = Artifact(
    "rejects.parquet",
    pa.schema(
        [
            pa.field("source_ref", pa.string(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("sample_id", pa.string()),
            pa.field("reason", pa.string(), nullable=False),  # short, countable
            pa.field("detail", pa.string()),  # the specifics, for a human
        ],
        metadata={"artifact": "rejects", "schema_version": SCHEMA_VERSION},
    ),
)

# --- localize ----------------------------------------------------------------------------------

REGIONS = Artifact(
    "regions.parquet",
    pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),  # ok | no_region | failed
            pa.field(
                "reason", pa.string()
            ),  # short, countable; null when ok but for an ok region's note (sam_fallback_*)
            pa.field("source", pa.string(), nullable=False),  # annotation | sam | heatmap | attention | attention+sam
            pa.field("mask_path", pa.string()),  # a store blob (a PNG, 0/255, image size); null unless ok
            pa.field("boxes", pa.list_(BOX), nullable=False),  # boxes used (prompts, or the region's components)
            pa.field("confidence", pa.float32()),  # [0, 1]: the visual pair's clinical-relevance score
            pa.field("area_fraction", pa.float32()),  # region pixels / image pixels
        ],
        metadata={"artifact": "regions", "schema_version": SCHEMA_VERSION},
    ),
)

# --- noise -------------------------------------------------------------------------------------

NOISED = Artifact(
    "noised.parquet",
    pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("status", pa.string(), nullable=False),  # ok | skipped | failed
            pa.field("reason", pa.string()),
            pa.field("noised_path", pa.string()),  # a store blob (a PNG), same size/dtype/channels as the original
            pa.field("mode", pa.string(), nullable=False),  # local | global
            pa.field("k", pa.int32(), nullable=False),
            pa.field("seed", pa.int64(), nullable=False),
        ],
        metadata={"artifact": "noised", "schema_version": SCHEMA_VERSION},
    ),
)

# --- hallucinate: one row per in-scope sample --------------------------------------------------

FALLBACK = pa.struct(
    [pa.field("backend", pa.string()), pa.field("status", pa.string()), pa.field("reason", pa.string())]
)

HALLUCINATIONS = Artifact(
    "hallucinations.parquet",
    pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("rejected", pa.string()),  # null unless status == ok
            pa.field("backend", pa.string(), nullable=False),  # rules | llm | target
            pa.field(
                "error_type", pa.string()
            ),  # negation, laterality, ... (tasks.hallucinate.clinical_rules.ERROR_TYPES, or "other")
            pa.field("candidates", pa.list_(pa.string())),  # the target model's sampled answers (target backend only)
            pa.field("attempts", pa.int32(), nullable=False),  # LLM answers tried / rules candidates tried
            pa.field("status", pa.string(), nullable=False),  # ok | skipped | failed
            pa.field("reason", pa.string()),  # short, countable, when not ok
            pa.field("origin", pa.string()),  # target_model | llm_rewrite | rules (hallucinate.rows.ORIGINS); ok only
            # A fallback chain (backend: [llm, rules]): what each backend tried before `backend` gave this row
            # (empty when the first one did).
            pa.field("fallbacks", pa.list_(FALLBACK), nullable=False),
        ],
        metadata={"artifact": "hallucinations", "schema_version": SCHEMA_VERSION},
    ),
)

# --- score -------------------------------------------------------------------------------------

SCORE_PROBABILITY = pa.struct([pa.field("value", pa.float64()), pa.field("p", pa.float64())])

JUDGE_ROUND = pa.struct(
    [
        pa.field(
            "round", pa.int32()
        ),  # scored-round number; an exclusion shares the number of the round it failed to play
        pa.field("judge", pa.string()),
        pa.field("score", pa.float64()),  # null when the judge was excluded
        pa.field("reason", pa.string()),
        pa.field("adopted", pa.bool_()),  # took the previous judge's score
        pa.field("error", pa.string()),  # why the judge was excluded (junk_reply, unavailable_<reason>); null otherwise
        # What the judge's own score came from: P(score value) over the score tokens (yes/no protocol: 1.0 and 0.0;
        # a parsed score: a point at it), how it was read (logits | logprobs | samples | parsed | rules), and the
        # score tokens' probability among all tokens when read from probabilities.
        pa.field("distribution", pa.list_(SCORE_PROBABILITY)),
        pa.field("source", pa.string()),
        pa.field("mass", pa.float64()),
    ]
)

SCORES = Artifact(
    "scores.parquet",
    pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("pair_type", pa.string(), nullable=False),  # text | visual
            pa.field("raw_score", pa.float64()),  # clinical relevance in [0, 1]; null unless status ok
            pa.field("weight", pa.float64()),  # normalized DPO weight; null unless status ok
            pa.field("status", pa.string(), nullable=False),  # ok | skipped (upstream had no pair) | failed
            pa.field(
                "reason", pa.string()
            ),  # ok: how the score was reached (adopted, no_agreement_mean, ...); else why none
            pa.field("error_type", pa.string()),  # text pairs: what the hallucinate stage changed
            pa.field("mode", pa.string()),  # debate | mean | localizer
            pa.field("rounds", pa.list_(JUDGE_ROUND), nullable=False),  # every judge turn, in order
            pa.field("n_rounds", pa.int32(), nullable=False),  # scored rounds (exclusions not counted)
            pa.field(
                "judges_used", pa.list_(pa.string()), nullable=False
            ),  # judges whose score entered; localizer:<source> for visual
        ],
        metadata={"artifact": "scores", "schema_version": SCHEMA_VERSION},
    ),
)

# --- assemble: the preference set (image paths relative to the set's version folder; one file per split) ---

PAIRS = Artifact(
    "data/{split}-00000-of-00001.parquet",
    pa.schema(
        [
            pa.field("pair_id", pa.string(), nullable=False),  # <sample_id>#<pair_type>
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("pair_type", pa.string(), nullable=False),  # text | visual
            pa.field("prompt", pa.string(), nullable=False),
            pa.field("chosen", pa.string(), nullable=False),
            pa.field("rejected", pa.string(), nullable=False),  # = chosen for visual pairs
            pa.field("chosen_image", pa.string(), nullable=False),
            pa.field("rejected_image", pa.string(), nullable=False),  # = chosen_image for text pairs
            pa.field("raw_score", pa.float64(), nullable=False),
            pa.field("weight", pa.float64(), nullable=False),
            pa.field("error_type", pa.string()),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),
            pa.field("answer_type", pa.string(), nullable=False),
        ],
        metadata={"artifact": "pairs", "schema_version": SCHEMA_VERSION},
    ),
)

DROPPED = Artifact(
    "dropped.parquet",
    pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("pair_type", pa.string()),  # null when the whole sample was left out (leakage)
            pa.field("reason", pa.string(), nullable=False),
            pa.field("detail", pa.string()),
        ],
        metadata={"artifact": "dropped", "schema_version": SCHEMA_VERSION},
    ),
)

# What the train stage reads of a preference set (a hand-made Parquet file may hold only these).
TRAIN_COLUMNS = (
    "pair_id",
    "pair_type",
    "prompt",
    "chosen",
    "rejected",
    "chosen_image",
    "rejected_image",
    "weight",
    "split",
)


# --- evaluate: one row per evaluated sample and model ------------------------------------------

PREDICTIONS = Artifact(
    "predictions.parquet",
    pa.schema(
        [
            pa.field("sample_id", pa.string(), nullable=False),
            pa.field("dataset", pa.string(), nullable=False),
            pa.field("split", pa.string(), nullable=False),
            pa.field("task", pa.string(), nullable=False),  # vqa | report
            pa.field("answer_type", pa.string(), nullable=False),  # closed | open | report
            pa.field("question", pa.string(), nullable=False),
            pa.field("answer", pa.string(), nullable=False),  # the reference
            pa.field("prediction", pa.string()),  # null when generation failed
            pa.field("model", pa.string(), nullable=False),  # base checkpoint folder
            pa.field("adapter", pa.string()),  # train artifact key; null for the base model
            pa.field("status", pa.string(), nullable=False),  # ok | failed
            pa.field("error", pa.string()),
            pa.field("closed_correct", pa.bool_()),  # normalized match (tasks.metrics.closed_correct)
            pa.field("substring_correct", pa.bool_()),  # the released evaluation's rule
            pa.field("exact_match", pa.bool_()),
            pa.field("token_recall", pa.float64()),
            pa.field("rouge_l", pa.float64()),  # per report; BLEU and METEOR are corpus-level (metrics.json)
        ],
        metadata={"artifact": "predictions", "schema_version": SCHEMA_VERSION},
    ),
)

# --- reading and writing --------------------------------------------------------------------


def table(rows: Iterable[Mapping[str, Any]] | pa.Table, artifact: Artifact) -> pa.Table:
    if isinstance(rows, pa.Table):
        missing = [name for name in artifact.schema.names if name not in rows.schema.names]
        extra = sorted(set(rows.schema.names) - set(artifact.schema.names))
        if missing or extra:
            raise ValueError(f"{artifact.name} table: columns missing {missing}, not in the schema {extra}")
        return rows.select(artifact.schema.names).cast(artifact.schema)
    rows = list(rows)
    extra = {k for row in rows for k in row} - set(artifact.schema.names)
    if extra:
        raise ValueError(f"columns not in the {artifact.name} schema: {sorted(extra)}")
    return pa.Table.from_pylist(rows, schema=artifact.schema)


def write(out: Path, artifact: Artifact, rows: Iterable[Mapping[str, Any]] | pa.Table, **fields: str) -> Path:
    """``rows`` (or a table of the artifact's columns) as ``artifact``'s file under ``out``
    (``fields`` fill its name, e.g. split)."""
    path = out / artifact.file.format(**fields)
    if not os.path.normpath(path).startswith(os.path.join(os.path.normpath(out), "")):
        raise ValueError(f"{artifact.name}: file name {artifact.file!r} with {fields} leaves the artifact folder")
    return write_file(path, artifact, rows)


def write_file(path: str | os.PathLike[str], artifact: Artifact, rows: Iterable[Mapping[str, Any]] | pa.Table) -> Path:
    """Write atomically: readers see the old file or the whole new one, never a part."""
    path = Path(path)
    data = table(rows, artifact)
    with replacing(path) as tmp:
        pq.write_table(data, tmp)
    return path


def read(manifest: Manifest, artifact: Artifact, columns: Sequence[str] | None = None) -> pa.Table:
    return read_file(manifest.file(artifact.file), artifact, columns)


def rows(manifest: Manifest, artifact: Artifact, columns: Sequence[str] | None = None) -> list[dict[str, Any]]:
    return read(manifest, artifact, columns).to_pylist()


def first_ok(manifest: Manifest, artifact: Artifact, columns: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` rows with status ok, as Python rows of ``columns`` only (UI grids: the
    rows of every sample would cost memory that grows with the run)."""
    data = read(manifest, artifact, ["status", *[c for c in columns if c != "status"]])
    return data.filter(pc.equal(data.column("status"), "ok")).slice(0, limit).to_pylist()


def head(manifest: Manifest, artifact: Artifact, columns: Sequence[str], limit: int) -> list[dict[str, Any]]:
    """The first ``limit`` rows as Python rows of ``columns`` (UI tables show a few: every
    sample's rows as Python objects, made and dropped in each stage's task, left the process
    holding memory that grew with the run)."""
    return read(manifest, artifact, columns).slice(0, limit).to_pylist()


def rows_of(manifest: Manifest, artifact: Artifact, ids: Iterable[str], columns: Sequence[str]) -> list[dict[str, Any]]:
    """The rows with these sample ids, as Python rows of ``columns`` (and sample_id)."""
    data = read(manifest, artifact, ["sample_id", *[c for c in columns if c != "sample_id"]])
    return data.filter(pc.is_in(data.column("sample_id"), value_set=pa.array(list(ids), pa.string()))).to_pylist()


def values_of(manifest: Manifest, artifact: Artifact, ids: Iterable[str], column: str) -> dict[str, Any]:
    """``column`` of the rows with these sample ids, by sample id."""
    return {row["sample_id"]: row[column] for row in rows_of(manifest, artifact, ids, [column])}


def read_file(path: str | os.PathLike[str], artifact: Artifact, columns: Sequence[str] | None = None) -> pa.Table:
    """Read and check the columns a consumer relies on are there with the declared types;
    ``columns`` reads only those (of the artifact's schema)."""
    names = list(columns) if columns is not None else artifact.schema.names
    missing = [name for name in names if name not in pq.read_schema(path).names]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    return pq.read_table(path, columns=names).cast(pa.schema([artifact.schema.field(name) for name in names]))
