"""The artifact store: every stage output lives at ``<root>/<stage>/<key>/`` with a manifest.

The key is a content hash of (stage, stage code version, stage config, input *content
digests*), so an unchanged re-run finds its outputs, a changed parameter recomputes that
stage and everything downstream whose input content changes, while upstream keys stay put.
Paths the config marks as identified by content (data roots, model folders) join the inputs
as digests, remembered in ``<root>/.digests.sqlite``. A directory only appears under its key
once complete: stages write into a temporary sibling that is renamed into place with the
manifest already inside, so a killed run never leaves a half artifact that a re-run would
mistake for a finished one.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks.store.files import temp_folder, write_text_atomic
from tasks.store.items import BUILD_ROWS, BUILD_WORK, StageItems
from tasks.store.keys import DigestMemo, digest_memo
from tasks.store.manifest import (
    MANIFEST,
    Keyed,
    Manifest,
    artifact_digest,
    config_identity,
    content_inputs,
    identity_of,
    lineage,
    stage_key,
)
from tasks.store.packed import blob_index
from tasks.store.verify import damage, file_index, set_aside

DIGESTS = ".digests.sqlite"


class ArtifactStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    @property
    def digests(self) -> DigestMemo:
        return digest_memo(self.root / DIGESTS)

    def key(
        self, stage: str, code: str, config: BaseModel, inputs: Mapping[str, Keyed]
    ) -> tuple[str, dict[str, Keyed]]:
        """The stage's key, and its inputs with the config's content-identified paths added."""
        contents = content_inputs(config, self.digests)
        clash = set(contents) & set(inputs)
        if clash:
            raise ValueError(f"{stage}: inputs {sorted(clash)} are also content-identified config fields; rename them")
        every = {**inputs, **contents}
        return stage_key(stage, code, config, every), every

    def directory(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str) -> Manifest | None:
        """The artifact under this key when it is present and whole (tasks.store.verify); a
        damaged one is set aside, with a warning, and None returned: it is rebuilt, never reused."""
        folder = self.directory(stage, key)
        if not folder.exists():
            return None
        manifest, problems = inspect_artifact(folder)
        if problems:
            set_aside(folder, f"{stage}/{key}", problems)
            return None
        return manifest

    def peek(self, stage: str, key: str) -> Manifest | None:
        """The manifest under this key, unchecked (listing, lineage): never for reuse."""
        try:
            return read_manifest(self.directory(stage, key) / MANIFEST)
        except (OSError, ValueError):
            return None

    def list(self, stage: str) -> list[Manifest]:
        folder = self.root / stage
        if not folder.is_dir():
            return []
        found = (self.peek(stage, p.name) for p in sorted(folder.iterdir()) if not p.name.startswith("."))
        return sorted((m for m in found if m is not None), key=lambda m: m.created)

    def run(
        self,
        stage: str,
        code: str,
        config: BaseModel,
        inputs: Mapping[str, Keyed],
        build: Callable[[Path], Mapping[str, float]],
        volatile: Sequence[str] = (),
        keyed: tuple[str, dict[str, Keyed]] | None = None,
    ) -> Manifest:
        """Return the stored artifact for this key, or build it into a temp dir and publish it.

        ``build(out_dir)`` writes the stage's files and returns its counters. ``volatile``:
        patterns of files that say how a build went rather than what it made (logs with
        timings), left out of the artifact's digest. ``keyed``: what ``key`` returned for these
        arguments, when the caller needed the key first (hashing a data root again costs a stat
        and a lookup per file).
        """
        key, inputs = keyed or self.key(stage, code, config, inputs)
        cached = self.get(stage, key)
        if cached is not None:
            return cached
        final = self.directory(stage, key)
        tmp = temp_folder(final.parent, key)
        started, cpu_started = time.perf_counter(), time.process_time()
        work: dict[str, float] = {}
        rows: set[str] = set()
        token, rows_token = BUILD_WORK.set(work), BUILD_ROWS.set(rows)
        try:
            counts = dict(build(tmp))
            manifest = Manifest(
                stage=stage,
                key=key,
                path=str(final),
                digest=artifact_digest(tmp, volatile),
                inputs={name: item.key for name, item in inputs.items()},
                input_digests={name: identity_of(item) for name, item in inputs.items()},
                lineage=lineage(inputs),
                config=config.model_dump(mode="json"),
                code_version=code,
                counts=counts,
                files=sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()),
                index=file_index(tmp) | blob_index(tmp),
                created=datetime.now(UTC).isoformat(timespec="microseconds"),
                seconds=round(time.perf_counter() - started, 3),
                cpu_seconds=round(time.process_time() - cpu_started, 3),
                run=current_run(),
                work=work,
                item_rows=sorted(rows),
            )
            write_text_atomic(tmp / MANIFEST, manifest.model_dump_json(indent=2))
            try:
                os.rename(tmp, final)
            except OSError:
                # Another run published the same key first; its content is equivalent by construction.
                shutil.rmtree(tmp, ignore_errors=True)
                existing = self.get(stage, key)
                if existing is None:
                    raise
                return existing
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        finally:
            BUILD_WORK.reset(token)
            BUILD_ROWS.reset(rows_token)
        return manifest

    def find_digest(self, stage: str, digest: str) -> Manifest | None:
        """The newest artifact of ``stage`` with this content (e.g. a preference set version)."""
        found = [m for m in self.list(stage) if m.digest == digest]
        return found[-1] if found else None

    def items(
        self, stage: str, code: str, config: BaseModel | Mapping[str, Any], ignore: Sequence[str] = ()
    ) -> StageItems:
        """The per-item cache of one stage under ``config`` (see tasks.store.items): an item's
        key holds the config's identity (less the top-level fields in ``ignore``, which apply
        after the items, e.g. score's normalizer) and the digests of its content-identified paths."""
        defined = {name: value for name, value in config_identity(config).items() if name not in ignore}
        contents = {name: snapshot.key for name, snapshot in content_inputs(config, self.digests).items()}
        return StageItems(self.root, stage, code, {"config": defined, "contents": contents})


def read_manifest(path: Path) -> Manifest:
    return Manifest.model_validate_json(path.read_bytes())


def inspect_artifact(folder: Path, deep: bool = False) -> tuple[Manifest | None, list[str]]:
    """An artifact folder's manifest and what is wrong with it (nothing: it is whole). A manifest
    without an index (written before the store verified) is checked for its files' presence."""
    try:
        manifest = read_manifest(folder / MANIFEST)
    except FileNotFoundError:
        return None, [f"{MANIFEST}: missing"]
    except (OSError, ValueError) as exc:
        return None, [f"{MANIFEST}: unreadable ({type(exc).__name__})"]
    if manifest.index:
        problems = damage(folder, manifest.index, deep)
    else:
        problems = [f"{name}: missing" for name in manifest.files if not (folder / name).is_file()]
    return manifest, problems


def current_run() -> str | None:
    """``<flow run name> (<id>)`` inside a Prefect flow run, else None."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    return f"{flow_run.get_name()} ({run_id})" if run_id else None
