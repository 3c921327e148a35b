"""What a stage hands on: its manifest (keys, lineage, config, counters, files), and the key
that names it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict

from tasks.config import identity
from tasks.store.keys import content_hash

MANIFEST = "manifest.json"


class Keyed(Protocol):
    key: str


class SourceSnapshot(BaseModel):
    """A stage input that is not an artifact: raw files, identified by a fingerprint."""

    model_config = ConfigDict(frozen=True)
    name: str
    key: str


class Manifest(BaseModel):
    """What a stage hands to the next one (and to Prefect): keys and paths, never data."""

    model_config = ConfigDict(frozen=True)
    stage: str
    key: str
    path: str
    inputs: dict[str, str]
    lineage: list[str]
    config: dict[str, Any]
    code_version: str
    counts: dict[str, float]
    files: list[str]
    created: str
    seconds: float
    # How the build went, not what it made: items computed vs reused from the item cache.
    work: dict[str, float] = {}

    def file(self, name: str) -> Path:
        if name not in self.files:
            raise FileNotFoundError(f"artifact {self.stage}/{self.key} has no file {name!r} (has {self.files})")
        return Path(self.path) / name


def stage_key(stage: str, code: str, config: BaseModel | Mapping[str, Any], inputs: Mapping[str, Keyed]) -> str:
    return content_hash(stage, code, config_identity(config), {name: item.key for name, item in inputs.items()})


def config_identity(config: BaseModel | Mapping[str, Any]) -> Any:
    return identity(config) if isinstance(config, BaseModel) else config


def lineage(inputs: Mapping[str, Keyed]) -> list[str]:
    found: set[str] = set()
    for name, item in inputs.items():
        if isinstance(item, Manifest):
            found.add(f"{item.stage}/{item.key}")
            found.update(item.lineage)
        else:
            found.add(f"source:{name}/{item.key}")
    return sorted(found)
