"""Recency-decayed popularity with forward decay (Cormode, Shkapenyuk, Srivastava & Xu 2009).

An event at time ``t`` adds ``exp(rate * (t - L))`` to its item, where ``L`` is a landmark
time and ``rate = ln 2 / half_life``. Every item's score is then the decayed count as of
any common time, up to one shared factor, so items compare directly and an update costs
O(1). When the weights grow large the landmark moves forward and all scores are rescaled
once. ``rate = 0`` gives plain counts.

``meta`` is a float64 array ``[landmark, rate, initialised, max score]``.

``order``/``rank`` keep the items sorted by score (descending, ties to the lower row):
an update only raises one item's score, so it moves up a few places (``pop_place``), and
the popularity top-k of a user is the first k unexcluded entries (``pop_topk``).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_RESCALE_AT = 1e150


@njit(cache=True)
def pop_learn(pop, n_items, meta, i, t, weight, order, rank):
    """Add one (weighted) interaction with item row ``i`` at event time ``t``; returns
    True when every score was rescaled (so every item's state changed)."""
    rescaled = False
    if meta[2] == 0.0:
        meta[0] = t
        meta[2] = 1.0
    rate = meta[1]
    x = rate * (t - meta[0])
    if x > 300.0:  # exp would overflow soon: move the landmark to t
        f = math.exp(-x)
        for j in range(n_items):
            pop[j] *= f
        meta[3] *= f
        meta[0] = t
        x = 0.0
        _resort(pop, n_items, order, rank)
        rescaled = True
    w = math.exp(x) * weight
    pop[i] += w
    if pop[i] > meta[3]:
        meta[3] = pop[i]
    if pop[i] > _RESCALE_AT:
        f = 1.0 / pop[i]
        for j in range(n_items):
            pop[j] *= f
        meta[3] *= f
        # scores were divided by f^-1: shift the landmark so new weights stay consistent
        meta[0] += math.log(1.0 / f) / rate if rate > 0.0 else 0.0
        _resort(pop, n_items, order, rank)
        rescaled = True
    else:
        pop_place(pop, order, rank, i)
    return rescaled


@njit(cache=True, inline="always")
def pop_now(pop, meta, i, t):
    """Decayed count of item ``i`` as of time ``t`` (for display and features)."""
    if meta[2] == 0.0:
        return 0.0
    return pop[i] * math.exp(-meta[1] * (t - meta[0]))



@njit(cache=True, inline="always")
def pop_place(pop, order, rank, i):
    """Move item ``i`` up the order after its score grew (ties: lower row first)."""
    r = rank[i]
    s = pop[i]
    while r > 0:
        j = order[r - 1]
        if pop[j] > s or (pop[j] == s and j < i):
            break
        order[r] = j
        rank[j] = r
        r -= 1
    order[r] = i
    rank[i] = r


@njit(cache=True)
def _resort(pop, n_items, order, rank):
    """Rebuild the order from scratch (after a rescale, where rounding can create ties)."""
    o = np.argsort(-pop[:n_items], kind="mergesort")
    for r in range(n_items):
        order[r] = o[r]
        rank[o[r]] = r


@njit(cache=True)
def pop_topk(pop, order, n_cat, excl, active, k, out_idx, out_sc):
    """The first k items of the popularity order that are active and not excluded."""
    c = 0
    for r in range(n_cat):
        if c == k:
            break
        j = order[r]
        if active[j] == 0 or excl[j] != 0:
            continue
        out_idx[c] = j
        out_sc[c] = pop[j]
        c += 1
    for r in range(c, k):
        out_idx[r] = -1
        out_sc[r] = -np.inf
    return c
