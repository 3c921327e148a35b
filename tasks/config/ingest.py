"""Stage ingest: which data sets, in which on-disk formats, and what counts as a usable row."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tasks.config.base import DATA_ROOT, OPERATIONAL, Name, StageConfig
from tasks.config.localize import LocalizeSource

SourceFormat = Literal["slake", "vqa-rad", "r2gen", "pathvqa", "jsonl"]


class SourceConfig(StageConfig):
    """One data set to ingest, in its on-disk format as distributed."""

    format: SourceFormat
    root: Path = Field(
        json_schema_extra=DATA_ROOT,
        description=(
            "The data set's folder (for jsonl: the .jsonl file or a folder of them); its files' content is an input"
        ),
    )
    name: Name | None = Field(default=None, description="Data set name recorded per sample; defaults by format")
    splits: list[Name] | None = Field(default=None, description="Keep only these splits; all when unset")
    # Not ingest's output: the run config copies it into localize.per_source (its key counts it there).
    localize: list[LocalizeSource] | None = Field(
        json_schema_extra=OPERATIONAL,
        default=None,
        min_length=1,
        description="This data set's localize chain (e.g. [annotation] for SLAKE, [attention] for VQA-RAD)",
    )

    @property
    def dataset(self) -> str:
        """The name its samples carry (``dataset``): ``name``, else one from its format and root."""
        if self.name:
            return self.name
        if self.format == "r2gen":  # iu_xray / mimic_cxr share the layout
            return self.root.name.lower().replace("_", "-")
        if self.format == "jsonl":
            return self.root.stem.lower() if self.root.is_file() else self.root.name.lower()
        return self.format


class IngestConfig(StageConfig):
    sources: list[SourceConfig] = Field(default_factory=list)
    languages: list[str] = Field(default=["en"], description="Question languages kept; other rows go to rejects")
    max_image_pixels: int = Field(default=50_000_000, description="Larger images are rejected (decompression bombs)")
    min_image_side: int = Field(default=16, description="Images with a smaller side are rejected as unusable")
    max_question_chars: int = Field(
        default=4_000, ge=1, description="Longer questions are rejected (question_too_long)"
    )
    max_answer_chars: int = Field(
        default=20_000, ge=1, description="Longer answers (reports included) are rejected (answer_too_long)"
    )
    dicom_window: bool = Field(default=True, description="Apply the VOI window stored in a DICOM file")
