"""The Prefect side of the store: a task's cache key is its artifact's store key.

Prefect's INPUTS policy would hash pickled arguments and collide across stages with equal
inputs; ``StageCachePolicy`` hashes exactly what the store hashes, so Prefect's *Cached*
and the store agree. The key names the store too (an artifact lives in one store; another
store's equal key is a different file). A Prefect record must never hand downstream stages a
manifest whose files are gone: the key carries a *generation* of the artifact, kept in the
store beside it and bumped whenever the policy finds the artifact missing, so a record made
before the artifact was deleted is never looked up again (only Prefect's public API is used).
"""

from __future__ import annotations

from typing import Any

from prefect.cache_policies import CachePolicy

from tasks.store.artifacts import ArtifactStore
from tasks.store.files import write_text_atomic
from tasks.store.keys import content_hash

GENERATIONS = ".generations"


class StageCachePolicy(CachePolicy):
    def __init__(self, stage: str, code: str):
        super().__init__()
        self.stage = stage
        self.code = code

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        store = ArtifactStore(inputs["store_root"])
        key, _ = store.key(self.stage, self.code, inputs["config"], keyed_inputs(inputs))
        return f"{self.stage}-{key}-{content_hash(str(store.root), length=8)}-g{generation(store, self.stage, key)}"


def keyed_inputs(inputs: dict[str, Any]) -> dict[str, Any]:
    """The task's artifact parameters as the stage names its inputs: a list of them as ``<name>.<i>``."""
    keyed: dict[str, Any] = {}
    for name, value in inputs.items():
        if _is_keyed(value):
            keyed[name] = value
        elif isinstance(value, (list, tuple)) and value and all(map(_is_keyed, value)):
            keyed.update({f"{name}.{i}": item for i, item in enumerate(value)})
    return keyed


def _is_keyed(value: Any) -> bool:
    return isinstance(getattr(value, "key", None), str)


def generation(store: ArtifactStore, stage: str, key: str) -> int:
    """The artifact's generation: unchanged while it exists, a new one when it is missing."""
    marker = store.root / stage / GENERATIONS / key
    current = int(marker.read_text()) if marker.is_file() else 0
    if store.get(stage, key) is not None:
        return current
    write_text_atomic(marker, str(current + 1))
    return current + 1


def stage_task_options(stage: str, code: str, **extra: Any) -> dict[str, Any]:
    """Options every stage's @task shares: its name, the store-keyed cache, persisted results."""
    return {"name": stage, "cache_policy": StageCachePolicy(stage, code), "persist_result": True, **extra}
