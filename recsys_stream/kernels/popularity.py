"""Recency-decayed popularity with forward decay (Cormode, Shkapenyuk, Srivastava & Xu 2009).

An event at time ``t`` adds ``exp(rate * (t - L))`` to its item, where ``L`` is a landmark
time and ``rate = ln 2 / half_life``. Every item's score is then the decayed count as of
any common time, up to one shared factor, so items compare directly and an update costs
O(1). When the weights grow large the landmark moves forward and all scores are rescaled
once. ``rate = 0`` gives plain counts.

``meta`` is a float64 array ``[landmark, rate, initialised, max score]``.
"""

from __future__ import annotations

import math

from numba import njit

_RESCALE_AT = 1e150


@njit(cache=True)
def pop_learn(pop, n_items, meta, i, t, weight):
    """Add one (weighted) interaction with item row ``i`` at event time ``t``."""
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


@njit(cache=True, inline="always")
def pop_now(pop, meta, i, t):
    """Decayed count of item ``i`` as of time ``t`` (for display and features)."""
    if meta[2] == 0.0:
        return 0.0
    return pop[i] * math.exp(-meta[1] * (t - meta[0]))

