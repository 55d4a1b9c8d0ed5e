"""Open-addressing set of (user row, item row) pairs: "has this user interacted with this item?".

Keys are ``(u << 32 | i) + 1`` stored in a power-of-two ``uint64`` table where 0 means
empty; probing is linear from a SplitMix64 hash. There are no deletions: a pair leaves
the set only when its user is evicted, and eviction rebuilds the table (see
``pairset_rebuild_without``). The caller keeps the load factor under one half by growing
the table before a batch (``pairset_grow``), so a probe sequence always ends.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .common import mix64

_S32 = np.uint64(32)
_ONE = np.uint64(1)


@njit(cache=True, inline="always")
def pair_key(u, i):
    return ((np.uint64(u) << _S32) | np.uint64(i)) + _ONE


@njit(cache=True, inline="always")
def _slot(key, mask):
    return np.int64(mix64(key) & np.uint64(mask))


@njit(cache=True)
def pairset_contains(table, u, i):
    key = pair_key(u, i)
    mask = table.shape[0] - 1
    s = _slot(key, mask)
    while True:
        k = table[s]
        if k == key:
            return True
        if k == 0:
            return False
        s = (s + 1) & mask


@njit(cache=True)
def pairset_add(table, count, u, i):
    """Add the pair; returns True when it was new. ``count`` is a 1-element int64 array."""
    key = pair_key(u, i)
    mask = table.shape[0] - 1
    s = _slot(key, mask)
    while True:
        k = table[s]
        if k == key:
            return False
        if k == 0:
            table[s] = key
            count[0] += 1
            return True
        s = (s + 1) & mask


@njit(cache=True)
def pairset_add_many(table, count, u, items):
    """Add (u, i) for every i of ``items`` (the caller reserved room)."""
    for t in range(items.shape[0]):
        pairset_add(table, count, u, items[t])


@njit(cache=True)
def pairset_rebuild_without(table, count, old, drop_user):
    """Insert the pairs of ``old`` into ``table``, leaving out those whose user row has
    ``drop_user[u]`` set (an empty ``drop_user`` keeps every pair: growing the table)."""
    mask = table.shape[0] - 1
    keep_all = drop_user.shape[0] == 0
    for j in range(old.shape[0]):
        key = old[j]
        if key == 0:
            continue
        u = np.int64((key - _ONE) >> _S32)
        if not keep_all and drop_user[u]:
            continue
        s = _slot(key, mask)
        while table[s] != 0:
            s = (s + 1) & mask
        table[s] = key
        count[0] += 1


def pairset_new(capacity: int = 1024) -> np.ndarray:
    cap = 1
    while cap < capacity:
        cap <<= 1
    return np.zeros(cap, dtype=np.uint64)


def pairset_grow(table: np.ndarray, count: np.ndarray, incoming: int) -> np.ndarray:
    """Return a table that keeps the load under 1/2 after ``incoming`` more pairs."""
    need = 2 * (int(count[0]) + int(incoming)) + 1
    if table.shape[0] >= need:
        return table
    cap = table.shape[0]
    while cap < need:
        cap <<= 1
    new = np.zeros(cap, dtype=np.uint64)
    count[0] = 0
    pairset_rebuild_without(new, count, table, np.zeros(0, dtype=np.uint8))
    return new
