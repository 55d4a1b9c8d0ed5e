"""Item-to-item collaborative filtering, updated per event.

Co-occurrence: when user u interacts with item i, every item j among the user's
``window`` previous items adds ``gamma^d`` to ``C[i, j]`` and ``C[j, i]`` (``d`` = how many
steps back j lies, 0 for the previous item), so only items close together in a history
count, nearer ones more. ``n[i]`` counts item i's interactions.

Similarity and score: with the user's last ``L`` items r_0 (most recent) .. r_{L-1}::

    sim(r, j) = C[r, j] / (n[r]^beta * n[j]^(1 - beta))          (beta = 1/2: cosine)
    s(u, j)   = sum_l alpha^l * sim(r_l, j)  +  pop_weight * pop(j) / max pop

so candidates come from the user's most recent items, weighted by recency, and the small
popularity term orders items no recent item points to (and a new user's whole list).

``C`` is dense (float32, rows x rows). That is right for catalogs up to tens of
thousands of items; million-item catalogs need a sparse neighbour store.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .core import LEARN, PEEK, RANK, WANT_LIST, observe, recent_item, user_topk
from .topk import position_in

HP_WINDOW, HP_GAMMA, HP_L, HP_ALPHA, HP_BETA, HP_POPW = range(6)
HP_SIZE = 6


@njit(cache=True)
def itemknn_scores(u, C, n, inv, hp, core, scores):
    """Fill ``scores[:n_cat]`` for user ``u`` (any row; a new user gets popularity only).

    ``inv[j] = n[j]^-(1 - beta)`` is kept up to date by ``itemknn_learn``.
    """
    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl, porder, prank,
     udirty, idirty) = core
    n_cat = dims[1]
    L = int(hp[HP_L])
    alpha = hp[HP_ALPHA]
    beta = hp[HP_BETA]
    popw = hp[HP_POPW]
    for j in range(n_cat):
        scores[j] = 0.0
    w = 1.0
    for l in range(L):  # a new user has no recent items
        r = recent_item(recent, uev, u, l)
        if r < 0:
            break
        if n[r] > 0:
            wr = w / math.pow(n[r], beta)
            row = C[r]
            for j in range(n_cat):
                scores[j] += wr * row[j]
        w *= alpha
    f = popw / pop_meta[3] if pop_meta[3] > 0.0 else 0.0
    for j in range(n_cat):
        scores[j] = scores[j] * inv[j] + f * pop[j]


@njit(cache=True)
def itemknn_learn(u, i, C, n, inv, hp, core):
    """Count co-occurrences of i with the user's previous items (call before ``observe``)."""
    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl, porder, prank,
     udirty, idirty) = core
    W = int(hp[HP_WINDOW])
    gamma = hp[HP_GAMMA]
    w = 1.0
    for back in range(W):
        j = recent_item(recent, uev, u, back)
        if j < 0:
            break
        if j != i:
            C[i, j] += w
            C[j, i] += w
            idirty[j] = 1
        w *= gamma
    n[i] += 1.0
    inv[i] = math.pow(n[i], hp[HP_BETA] - 1.0)


@njit(cache=True, nogil=True)
def itemknn_batch(U, I, T, F, k, C, n, inv, hp, core, out, scores):
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
            itemknn_scores(u, C, n, inv, hp, core, scores)
            c = user_topk(scores, n_cat, u, core, k, topk_out[e], sc_tmp)
            pos_out[e] = position_in(topk_out[e], c, i) if i < n_cat else -1
        if f & LEARN:
            itemknn_learn(u, i, C, n, inv, hp, core)
        if not (f & PEEK):
            observe(core, u, i, T[e], 1.0)
        if f & WANT_LIST:
            itemknn_scores(u, C, n, inv, hp, core, scores)
            user_topk(scores, dims[1], u, core, k, lst_out[e], sc_tmp)
            for r in range(k):
                lst_sc_out[e, r] = sc_tmp[r]
    return -1
