"""The artifact store, one concern a module:

- ``keys``: canonical JSON, content hashes, file digests;
- ``code``: code versions, derived from the import graph;
- ``files``: atomic writes, temporary folders, links;
- ``manifest``: what a stage hands on, and the key that names it;
- ``items``: the per-item cache under per-sample stages, and its shards;
- ``packed``: how items lie on disk (rows per shard in Parquet, files once by content);
- ``migrate``: converting an item cache of the previous layout;
- ``artifacts``: building and publishing stage artifacts;
- ``policy``: Prefect's cache key = the store key.
"""

from tasks.store.artifacts import ArtifactStore
from tasks.store.code import code_version
from tasks.store.files import link_or_copy, replacing, write_bytes_atomic, write_if_changed, write_text_atomic
from tasks.store.items import LLM_TAG, SHARDS, Compute, Item, ShardJob, StageFailed, by_content, compute_items
from tasks.store.keys import (
    DigestMemo,
    canonical_json,
    content_hash,
    file_digest,
    remember_digest,
    safe_stem,
    tree_digest,
)
from tasks.store.manifest import MANIFEST, Keyed, Manifest, SourceSnapshot, identity_of, stage_key
from tasks.store.policy import StageCachePolicy, stage_task_options

__all__ = [
    "canonical_json",
    "code_version",
    "content_hash",
    "file_digest",
    "remember_digest",
    "tree_digest",
    "DigestMemo",
    "safe_stem",
    "link_or_copy",
    "replacing",
    "write_bytes_atomic",
    "write_text_atomic",
    "write_if_changed",
    "MANIFEST",
    "Keyed",
    "Manifest",
    "SourceSnapshot",
    "stage_key",
    "identity_of",
    "LLM_TAG",
    "SHARDS",
    "Compute",
    "Item",
    "ShardJob",
    "StageFailed",
    "by_content",
    "compute_items",
    "ArtifactStore",
    "StageCachePolicy",
    "stage_task_options",
]
