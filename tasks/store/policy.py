"""The Prefect side of the store: a task's cache key is its artifact's store key.

Prefect's INPUTS policy would hash pickled arguments and collide across stages with equal
inputs; ``StageCachePolicy`` hashes exactly what the store hashes, so Prefect's *Cached*
and the store agree. The key names the store too (an artifact lives in one store; another
store's equal key is a different file). Prefect's records are a hint, never the truth: the key
ends with a random *instance* token kept beside the artifact while the store finds the artifact
present and whole (tasks.store.verify), and drawn anew whenever it does not - deleted, damaged,
or in a store deleted and curated again. A record made for an earlier instance is never looked
up again, so the task runs and the store rebuilds (only Prefect's public API is used).
"""

from __future__ import annotations

import uuid
from typing import Any

from prefect.cache_policies import CachePolicy

from tasks.store.artifacts import ArtifactStore
from tasks.store.files import write_text_atomic
from tasks.store.keys import content_hash

INSTANCES = ".instances"


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
        return f"{self.stage}-{key}-{content_hash(str(store.root), length=8)}-{instance(store, self.stage, key)}"


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


def instance(store: ArtifactStore, stage: str, key: str) -> str:
    """The artifact's instance token: unchanged while it is whole, a new random one when not."""
    marker = store.root / stage / INSTANCES / key
    if store.get(stage, key) is not None and marker.is_file():
        return marker.read_text()
    token = uuid.uuid4().hex[:16]
    write_text_atomic(marker, token)
    return token


def stage_task_options(stage: str, code: str, **extra: Any) -> dict[str, Any]:
    """Options every stage's @task shares: its name, the store-keyed cache, persisted results."""
    return {"name": stage, "cache_policy": StageCachePolicy(stage, code), "persist_result": True, **extra}
