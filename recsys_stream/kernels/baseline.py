"""Popularity baseline model: rank the catalog by recency-decayed popularity."""

from __future__ import annotations

import numpy as np
from numba import njit

from .core import PEEK, RANK, WANT_LIST, observe, user_pop_topk
from .popularity import pop_now
from .topk import position_in


@njit(cache=True, nogil=True)
def pop_batch(U, I, T, F, k, core, out, scores):
    """Prequential popularity baseline: rank by decayed popularity, then count the event."""
    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl, porder, prank,
     udirty, idirty) = core
    pred_out, pos_out, topk_out, lst_out, lst_sc_out = out
    sc_tmp = np.empty(k, dtype=np.float64)
    for e in range(U.shape[0]):
        u = U[e]
        i = I[e]
        f = F[e]
        if f & RANK:
            n_cat = dims[1]
            c = user_pop_topk(u, core, n_cat, k, topk_out[e], sc_tmp)
            pos_out[e] = position_in(topk_out[e], c, i) if i < n_cat else -1
        if not (f & PEEK):
            observe(core, u, i, T[e], 1.0)
        if f & WANT_LIST:
            user_pop_topk(u, core, dims[1], k, lst_out[e], sc_tmp)
            for r in range(k):
                lst_sc_out[e, r] = pop_now(pop, pop_meta, lst_out[e, r], T[e]) if lst_out[e, r] >= 0 else 0.0
    return -1
