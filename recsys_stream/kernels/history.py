"""Per-user interaction histories: the distinct items of each user, in order of first interaction.

All histories live in one int32 ``pool``; user u's items are
``pool[off[u] : off[u] + length[u]]`` with room for ``cap[u]``. Kernels only append
(``history_append``), never grow: before a batch, ``history_reserve`` moves every user
whose room could run out to the end of the pool with a doubled capacity (the caller
grows or compacts the pool first, see ``state.History``). The set of a user's items is
what ranking excludes, what a checkpoint stores per user and what eviction drops.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def history_append(off, length, pool, u, i):
    pool[off[u] + length[u]] = i
    length[u] += 1


@njit(cache=True, inline="always")
def mark_history(off, length, pool, u, mask, value):
    """Set ``mask[j] = value`` for every item j of user u (u < 0: nothing)."""
    if u < 0:
        return
    base = off[u]
    for t in range(length[u]):
        mask[pool[base + t]] = value


@njit(cache=True)
def history_relocations(users, need, cap):
    """New capacities (0: no move) for ``users`` needing ``need`` slots: the next power of
    two, at least 8."""
    out = np.zeros(users.shape[0], dtype=np.int64)
    for t in range(users.shape[0]):
        u = users[t]
        if need[t] > cap[u]:
            c = 8
            while c < need[t]:
                c *= 2
            out[t] = c
    return out


@njit(cache=True)
def history_move(users, new_cap, off, length, cap, pool, used):
    """Move the listed users to the end of the pool; returns the new ``used``."""
    for t in range(users.shape[0]):
        c = new_cap[t]
        if c == 0:
            continue
        u = users[t]
        src = off[u]
        for j in range(length[u]):
            pool[used + j] = pool[src + j]
        off[u] = used
        cap[u] = c
        used += c
    return used


@njit(cache=True)
def history_compact(n_users, off, length, cap, old, new):
    """Copy every user's items into ``new`` back to back (capacity = next power of two >= 8)."""
    used = 0
    for u in range(n_users):
        n = length[u]
        if cap[u] == 0 and n == 0:
            continue
        c = 8
        while c < n:
            c *= 2
        src = off[u]
        for j in range(n):
            new[used + j] = old[src + j]
        off[u] = used
        cap[u] = c
        used += c
    return used
