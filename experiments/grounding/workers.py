"""Worker processes for the experiment's seeds: each runs its jobs as Prefect flows on the parent's server.

Seeds are independent after curation, and one torch thread per process is the fastest use of a core
others share (bench/sft.py), so the run spreads its seeds over one process per core rather than
threads over one model. Processes are spawned (a forked torch or Prefect client is unsafe), die with
the run that started them, and report to the API the parent's runs use - the temporary server included.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

from flows.server import run_api_url
from models.lifetime import die_with_parent

API_SETTING = "PREFECT_API_URL"


@contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """``workers`` processes; on the way out by an error, jobs not yet started are cancelled."""
    url = run_api_url()
    if url is None:
        raise RuntimeError("worker_pool: start it inside a flow run, so that its workers join that run's server")
    # Spawned workers read Prefect's settings from the environment at import, and spawn may start one at any
    # submit: the variable stays set while the pool lives.
    previous = os.environ.get(API_SETTING)
    os.environ[API_SETTING] = url
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=die_with_parent,
        initargs=(signal.SIGTERM,),
    )
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)
        if previous is None:
            os.environ.pop(API_SETTING, None)
        else:
            os.environ[API_SETTING] = previous
