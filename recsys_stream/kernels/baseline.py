"""Popularity baseline: rank by recency-decayed popularity (``popularity``).

Its state is the item side's shared popularity, so the model tuple holds nothing but
what ``driver`` dispatches on. Steps: ``rank`` and ``recommend`` (the popularity order,
the user's items excluded); it learns nothing beyond ``observe``.
"""

from __future__ import annotations

from collections import namedtuple

from numba import njit

from .core import user_pop_topk
from .driver import register_steps
from .popularity import pop_now

PopK = namedtuple("PopK", ["hp"])


@njit(cache=True)
def pop_rank(m, us, it, sc, b, e, k, out_idx, out_sc):
    return user_pop_topk(b.U[e], us, it, sc, k, out_idx, out_sc)


@njit(cache=True)
def pop_recommend(m, us, it, sc, u, t, k, out_idx, out_sc):
    c = user_pop_topk(u, us, it, sc, k, out_idx, out_sc)
    for r in range(k):
        out_sc[r] = pop_now(it.pop, it.pop_meta, out_idx[r], t) if out_idx[r] >= 0 else 0.0
    return c


register_steps(PopK, rank=pop_rank, recommend=pop_recommend)
