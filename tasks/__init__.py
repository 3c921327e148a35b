"""The pipeline's stages: each a pure function from input artifacts and a typed config to an artifact."""

import os

import pyarrow as pa

# Arrow's default allocator (mimalloc) keeps what the shard threads free, so a run's peak RSS grew
# with its samples (bench/scale.py at 4k samples: 469 MB, 412 MB on the system allocator, with
# the same bytes written). A user's own ARROW_DEFAULT_MEMORY_POOL stands.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    pa.set_memory_pool(pa.system_memory_pool())
