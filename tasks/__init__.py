"""The pipeline's stages: each a pure function from input artifacts and a typed config to an artifact."""

import os

# Arrow's default allocator (mimalloc) keeps what the shard threads free, so a run's peak RSS grew
# with its samples (bench/scale.py at 4k samples: 469 MB, 412 MB on the system allocator, with
# the same bytes written). A user's own ARROW_DEFAULT_MEMORY_POOL stands.
if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
    # Read by Arrow's C++ (the Parquet reader and writer too) on its first allocation, and by workers
    # this process starts; set_memory_pool covers a process that allocated before importing tasks.
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
