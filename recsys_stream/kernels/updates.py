"""Kernels of the shared item side (``items``): distinct rows of an update, a stable
counting sort by bucket, and the replay of popularity and co-occurrence logs."""

from __future__ import annotations

import numpy as np
from numba import njit

from .itemknn import add_pair
from .popularity import logaddexp


@njit(cache=True, nogil=True)
def distinct_rows(rows, n_rows):
    """The distinct values of ``rows`` (each in [0, n_rows)), sorted: one pass."""
    mark = np.zeros(n_rows, dtype=np.uint8)
    c = 0
    for t in range(rows.shape[0]):
        r = rows[t]
        if mark[r] == 0:
            mark[r] = 1
            c += 1
    out = np.empty(c, dtype=np.int64)
    c = 0
    for r in range(n_rows):
        if mark[r] != 0:
            out[c] = r
            c += 1
    return out


@njit(cache=True, nogil=True)
def bucket_order(buckets, n_buckets):
    """A stable counting sort of ``buckets``: (order, start of each bucket in it)."""
    start = np.zeros(n_buckets + 1, dtype=np.int64)
    for t in range(buckets.shape[0]):
        start[buckets[t] + 1] += 1
    for b in range(n_buckets):
        start[b + 1] += start[b]
    fill = start[:-1].copy()
    order = np.empty(buckets.shape[0], dtype=np.int64)
    for t in range(buckets.shape[0]):
        b = buckets[t]
        order[fill[b]] = t
        fill[b] += 1
    return order, start


@njit(cache=True, nogil=True)
def replay_log_pop(lp, rows, xs):
    for t in range(rows.shape[0]):
        lp[rows[t]] = logaddexp(lp[rows[t]], xs[t])


@njit(cache=True, nogil=True)
def replay_pairs(C, off, nn, cap, pj, pc, used, cap_max, i, j, w, start):
    """Replay increments from ``start``; returns how far it got (it stops before an
    increment the pool may have no room for)."""
    for t in range(start, i.shape[0]):
        if C.shape[0] <= 1 and used[0] + 2 * cap_max > pj.shape[0]:
            return t
        add_pair(C, off, nn, cap, pj, pc, used, cap_max, i[t], j[t], w[t])
    return i.shape[0]
