"""Models held once per worker process, whatever number of shards and threads ask for them.

A stage that loads a model per shard pays the load (a 7B VLM: a minute, 15 GB) once per 16
samples, and N worker threads hold N copies on one GPU. Here a model is built once per process
under its key (the caller's: the content digests of its folders and the device), and used by
one thread at a time: that lock is the GPU concurrency limit, the copy is shared. ``release``
drops every held model and the allocator's cache, before a process hands the GPU to training.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Held:
    value: Any
    lock: threading.Lock = field(default_factory=threading.Lock)  # one user at a time


_HELD: dict[Hashable, Held] = {}
_BUILDING = threading.Lock()  # two shards asking at once build one copy


def held(key: Hashable, build: Callable[[], Any]) -> Held:
    """The model under ``key``, built by ``build`` the first time it is asked for in this process."""
    with _BUILDING:
        if key not in _HELD:
            _HELD[key] = Held(build())
        return _HELD[key]


@contextmanager
def using(key: Hashable, build: Callable[[], Any]) -> Iterator[Any]:
    """The held model, with this thread its only user until the block ends."""
    entry = held(key, build)
    with entry.lock:
        yield entry.value


def release() -> int:
    """Drop every held model and return the GPU memory they used; returns how many were held."""
    with _BUILDING:
        count = len(_HELD)
        _HELD.clear()
    gc.collect()
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return count
