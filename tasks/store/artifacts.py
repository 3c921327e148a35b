"""The artifact store: every stage output lives at ``<root>/<stage>/<key>/`` with a manifest.

The key is a content hash of (stage, stage code version, stage config, input keys), so an
unchanged re-run finds its outputs, a changed parameter recomputes that stage and, because
its key changes, everything downstream, while upstream keys stay put. A directory only
appears under its key once complete: stages write into a temporary sibling that is renamed
into place with the manifest already inside, so a killed run never leaves a half artifact
that a re-run would mistake for a finished one.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from tasks.store.files import temp_folder, write_text_atomic
from tasks.store.items import BUILD_WORK, StageItems
from tasks.store.manifest import MANIFEST, Keyed, Manifest, lineage, stage_key


class ArtifactStore:
    def __init__(self, root: str | os.PathLike[str]):
        self.root = Path(root).resolve()

    def directory(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def get(self, stage: str, key: str) -> Manifest | None:
        path = self.directory(stage, key) / MANIFEST
        if not path.is_file():
            return None
        return Manifest.model_validate_json(path.read_text())

    def list(self, stage: str) -> list[Manifest]:
        folder = self.root / stage
        if not folder.is_dir():
            return []
        found = (self.get(stage, p.name) for p in sorted(folder.iterdir()) if not p.name.startswith("."))
        return sorted((m for m in found if m is not None), key=lambda m: m.created)

    def run(
        self,
        stage: str,
        code: str,
        config: BaseModel,
        inputs: Mapping[str, Keyed],
        build: Callable[[Path], Mapping[str, float]],
    ) -> Manifest:
        """Return the stored artifact for this key, or build it into a temp dir and publish it.

        ``build(out_dir)`` writes the stage's files and returns its counters.
        """
        key = stage_key(stage, code, config, inputs)
        cached = self.get(stage, key)
        if cached is not None:
            return cached
        final = self.directory(stage, key)
        tmp = temp_folder(final.parent, key)
        started = time.perf_counter()
        work: dict[str, float] = {}
        token = BUILD_WORK.set(work)
        try:
            counts = dict(build(tmp))
            manifest = Manifest(
                stage=stage,
                key=key,
                path=str(final),
                inputs={name: item.key for name, item in inputs.items()},
                lineage=lineage(inputs),
                config=config.model_dump(mode="json"),
                code_version=code,
                counts=counts,
                files=sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()),
                created=datetime.now(UTC).isoformat(timespec="microseconds"),
                seconds=round(time.perf_counter() - started, 3),
                work=work,
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
        return manifest

    def items(self, stage: str, code: str, config: BaseModel | Mapping[str, Any]) -> StageItems:
        """The per-item cache of one stage under ``config`` (see tasks.store.items)."""
        return StageItems(self.root, stage, code, config)
