"""Per-thread work arrays over item rows.

Kernels need arrays as long as the catalog (scores, an exclusion mask, a hybrid's source
ranks) that carry nothing between calls. They belong to the thread running the kernel,
not to a shard: the shards of one worker run one after another and share them, and the
workers of a process (threads) each have their own.
"""

from __future__ import annotations

import threading

import numpy as np

from .kernels.layout import Scratch

_LOCAL = threading.local()


def _pool() -> dict:
    pool = getattr(_LOCAL, "pool", None)
    if pool is None:
        pool = _LOCAL.pool = {}
    return pool


def array(name: str, n: int, dtype, fill=0) -> np.ndarray:
    """This thread's array ``name`` of at least ``n`` entries (``fill`` everywhere at first;
    the caller leaves it as it found it)."""
    pool = _pool()
    arr = pool.get(name)
    if arr is None or len(arr) < n or arr.dtype != np.dtype(dtype):
        size = 1024
        while size < n:
            size *= 2
        arr = np.full(size, fill, dtype=dtype)
        pool[name] = arr
    return arr


def scratch(n_items: int, k: int) -> Scratch:
    return Scratch(array("scores", n_items, np.float64), array("excl", n_items, np.uint8),
                   array("sc_k", max(k, 1), np.float64))
