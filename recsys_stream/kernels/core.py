"""What every model shares per event: recording an interaction, the recency ring, and the
user's top-k over a score vector or over popularity (see ``layout`` for the structures).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .history import history_append, mark_history
from .pairset import pairset_add
from .popularity import pop_learn, pop_topk
from .topk import topk_masked


@njit(cache=True, inline="always")
def extend_catalog(it, i):
    """Make item row ``i`` part of the catalog (rows arrive in order: a new item takes the
    last places of the popularity order)."""
    n = it.n[0]
    if i >= n:
        for r in range(n, i + 1):
            it.porder[r] = r
            it.prank[r] = r
        it.n[0] = i + 1


@njit(cache=True, inline="always")
def observe(us, it, u, i, t, weight):
    """Record interaction (u, i) at time t: seen set, history, counts, popularity, recency."""
    extend_catalog(it, i)
    if pairset_add(us.seen, us.seen_count, u, i):
        history_append(us.hoff, us.hlen, us.hpool, u, i)
    if pop_learn(it.pop, it.n[0], it.pop_meta, i, t, weight, it.porder, it.prank):
        for j in range(it.n[0]):  # a rescale changed every item's score
            it.dirty[j] = 1
    us.dirty[u] = 1
    it.dirty[i] = 1
    R = us.recent.shape[1]
    us.recent[u, us.uev[u] % R] = i
    us.uev[u] += 1
    it.iev[i] += 1


@njit(cache=True, inline="always")
def recent_item(us, u, back):
    """The user's item ``back`` steps ago (0 = most recent), or -1."""
    n = us.uev[u]
    R = us.recent.shape[1]
    if back >= n or back >= R:
        return -1
    return us.recent[u, (n - 1 - back) % R]


@njit(cache=True, inline="always")
def user_topk(scores, n_cat, u, us, it, sc, k, out_idx, out_sc):
    """Top-k of ``scores[:n_cat]`` for user row u, excluding the user's items and retired
    ones (u < 0: an unknown user, nothing of theirs to exclude); returns the count."""
    mark_history(us.hoff, us.hlen, us.hpool, u, sc.excl, 1)
    c = topk_masked(scores, n_cat, sc.excl, it.active, k, out_idx, out_sc)
    mark_history(us.hoff, us.hlen, us.hpool, u, sc.excl, 0)
    return c


@njit(cache=True, inline="always")
def user_pop_topk(u, us, it, sc, k, out_idx, out_sc):
    """The popularity list of user row u (their items excluded; u < 0: nothing excluded):
    the list of a user the model does not know yet."""
    mark_history(us.hoff, us.hlen, us.hpool, u, sc.excl, 1)
    c = pop_topk(it.pop, it.porder, it.n[0], sc.excl, it.active, k, out_idx, out_sc)
    mark_history(us.hoff, us.hlen, us.hpool, u, sc.excl, 0)
    return c


@njit(cache=True)
def pad(out_idx, out_sc, c, k):
    for r in range(c, k):
        out_idx[r] = -1
        out_sc[r] = -np.inf
