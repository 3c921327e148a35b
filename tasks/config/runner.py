"""Where per-sample shards run (not part of any key)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tasks.config.base import StageConfig


class RunnerConfig(StageConfig):
    """Where per-sample shards run. Not part of any key: results do not depend on it."""

    kind: Literal["threads", "dask", "ray"] = Field(
        default="threads",
        description=(
            "threads: this process; dask: a distributed cluster (prefect-dask); ray: a Ray cluster (prefect-ray)"
        ),
    )
    address: str | None = Field(
        default=None,
        description="dask: scheduler address (tcp://host:8786); ray: cluster address (ray://host:10001 or auto). "
        "Unset: a local cluster of `workers` processes for the run",
    )
    workers: int = Field(
        default=2,
        ge=1,
        description="threads: threads; dask/ray without address: local worker processes. Also the fewest shards "
        "a build is cut into (one per worker): with an address, set it to the cluster's workers",
    )
    shard_size: int = Field(
        default=128,
        ge=1,
        description="Fewest items per shard (one Prefect task run each). A task run costs ~50 ms of Prefect "
        "client and server time whatever its size, more than 128 rules items take: smaller shards made a re-run "
        "of 10% new samples cost a third of the first run",
    )
    max_shards: int = Field(
        default=128,
        ge=1,
        description="Most shards a stage build is cut into: a larger build gets larger shards, so the cost of "
        "Prefect's task runs stays flat per build instead of growing with the samples",
    )
