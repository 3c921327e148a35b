"""Where the per-sample shards of a stage run: threads here, or a Dask or Ray cluster.

Stages never know: they hand their missing items to ``tasks.store.SHARDS`` (see
``StageItems.build``). A flow opens ``shard_runner(config.runner)`` around its stages, which
puts a Prefect task runner there; each shard then becomes a Prefect task run
(``localize-shard-3``) on that runner, with its own state in the UI, and the stage's progress
artifact moves as shards finish. The same code runs on every runner, and the artifacts (and
so the set version) do not depend on the runner or the shard size: items are keyed by
content and gathered in the stage's own order.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from tasks import counters, ui
from tasks.config import RunnerConfig
from tasks.store import SHARDS, Compute, Item, ShardJob, compute_items


class Unwalked:
    """A shard's items as one object that Prefect does not walk looking for futures, as it walks
    lists and dataclasses: every payload, twice a task run (a tenth of a re-run's CPU). Prefect's
    own quote() does this on threads but reaches Dask workers as a bare tuple."""

    def __init__(self, items: list[Item]):
        self.items = items


@task(name="shard", task_run_name="{stage}-shard-{index}", cache_policy=NO_CACHE, persist_result=False)
def shard_task(store_root: str, stage: str, index: int, items: Unwalked, compute: Compute) -> dict[str, float]:
    return compute_items(store_root, stage, items.items, compute)


class PrefectShards:
    """Runs a build's shards as Prefect task runs on a started task runner."""

    def __init__(self, runner: TaskRunner, shard_size: int, max_shards: int, workers: int):
        self.runner = runner
        self.shard_size = shard_size
        self.max_shards = max_shards
        self.workers = workers

    def run(self, job: ShardJob) -> dict[str, float]:
        progress = ui.Progress(job.stage, job.total)
        if job.reused:
            progress.advance(job.reused)
        shard = shard_task.with_options(tags=set(job.tags)) if job.tags else shard_task
        futures = {
            self.runner.submit(
                shard,
                {
                    "store_root": job.store_root,
                    "stage": job.stage,
                    "index": i,
                    "items": Unwalked(items),
                    "compute": job.compute,
                },
            ): len(items)
            for i, items in enumerate(job.shards)
        }
        counts: dict[str, float] = {}
        failures: list[BaseException] = []
        # Every shard runs to its end before a failure is raised: finished items stay cached.
        for future in as_completed(list(futures)):
            try:
                counters.merge(counts, future.result())
            except Exception as exc:  # noqa: BLE001 - re-raised below, after the other shards
                failures.append(exc)
            progress.advance(futures[future])
        if failures:
            raise failures[0]
        return counts


def make_task_runner(config: RunnerConfig) -> TaskRunner:
    if config.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=config.workers)
    if config.kind == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError as exc:
            raise ImportError(
                "runner.kind=dask needs prefect-dask: pip install prefect-dask==0.3.7 distributed==2026.8.0"
            ) from exc
        if config.address:
            return DaskTaskRunner(address=config.address)
        # No address: a cluster of worker processes on this machine, for as long as the flow runs.
        return DaskTaskRunner(
            cluster_kwargs={
                "n_workers": config.workers,
                "threads_per_worker": 1,
                "processes": True,
                "dashboard_address": None,
            }
        )
    try:
        from prefect_ray import RayTaskRunner
    except ImportError as exc:
        raise ImportError("runner.kind=ray needs prefect-ray: pip install prefect-ray==0.6.0 ray==2.60.0") from exc
    if config.address:
        return RayTaskRunner(address=config.address)
    # Ray's raylet starts the worker processes from the environment, not from this process's sys.path:
    # without the code root there they would import whichever copy is installed (the main checkout, for a
    # git worktree), not the code this flow runs.
    code_root = str(Path(__file__).resolve().parents[1])
    pythonpath = os.pathsep.join(filter(None, [code_root, os.environ.get("PYTHONPATH")]))
    return RayTaskRunner(
        init_kwargs={
            "num_cpus": config.workers,
            "include_dashboard": False,
            "runtime_env": {"env_vars": {"PYTHONPATH": pythonpath}},
        }
    )


@contextmanager
def shard_runner(config: RunnerConfig) -> Iterator[Any]:
    """Stages built inside this block run their shards as Prefect tasks on ``config``'s runner."""
    with make_task_runner(config) as runner:
        token = SHARDS.set(PrefectShards(runner, config.shard_size, config.max_shards, config.workers))
        try:
            yield runner
        finally:
            SHARDS.reset(token)
