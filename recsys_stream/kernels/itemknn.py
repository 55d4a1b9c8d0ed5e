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

Steps (``driver``): ``rank``; ``learn_pre``, before ``observe``, so the window is the
user's items before this one; ``recommend``.
"""

from __future__ import annotations

import math
from collections import namedtuple

from numba import njit

from .core import recent_item, user_topk
from .driver import register_steps
from .layout import bind_constructor, define

ItemKNNHP = namedtuple("ItemKNNHP", ["window", "gamma", "recent", "alpha", "beta", "pop_weight"])
# inv[j] = n[j]^-(1 - beta), kept up to date by itemknn_learn
ItemKNNK, ItemKNNKType = define("ItemKNNK", ['C', 'n', 'inv', 'hp'], __name__)


@njit(cache=True)
def _new_itemknnk(C, n, inv, hp):
    return ItemKNNK(C, n, inv, hp)


bind_constructor(ItemKNNK, _new_itemknnk)


@njit(cache=True, inline="always")
def itemknn_scores(m, us, it, u, scores):
    """Fill ``scores[:n_cat]`` for user ``u`` (any row; a new user gets popularity only)."""
    hp = m.hp
    C, n, inv = m.C, m.n, m.inv
    n_cat = it.n[0]
    for j in range(n_cat):
        scores[j] = 0.0
    w = 1.0
    for l in range(hp.recent):  # a new user has no recent items
        r = recent_item(us, u, l)
        if r < 0:
            break
        if n[r] > 0:
            wr = w / math.pow(n[r], hp.beta)
            row = C[r]
            for j in range(n_cat):
                scores[j] += wr * row[j]
        w *= hp.alpha
    pop = it.pop
    pmax = it.pop_meta[3]
    f = hp.pop_weight / pmax if pmax > 0.0 else 0.0
    for j in range(n_cat):
        scores[j] = scores[j] * inv[j] + f * pop[j]


@njit(cache=True, inline="always")
def itemknn_learn(m, us, it, u, i):
    """Count co-occurrences of i with the user's previous items (call before ``observe``)."""
    hp = m.hp
    C = m.C
    w = 1.0
    for back in range(hp.window):
        j = recent_item(us, u, back)
        if j < 0:
            break
        if j != i:
            C[i, j] += w
            C[j, i] += w
            it.dirty[j] = 1
        w *= hp.gamma
    m.n[i] += 1.0
    m.inv[i] = math.pow(m.n[i], hp.beta - 1.0)


@njit(cache=True, inline="always")
def itemknn_rank(m, us, it, sc, b, e, k, out_idx, out_sc):
    u = b.U[e]
    itemknn_scores(m, us, it, u, sc.scores)
    return user_topk(sc.scores, it.n[0], u, us, it, sc, k, out_idx, out_sc)


@njit(cache=True, inline="always")
def itemknn_learn_pre(m, us, it, sc, b, e):
    itemknn_learn(m, us, it, b.U[e], b.I[e])
    return True


@njit(cache=True, inline="always")
def itemknn_recommend(m, us, it, sc, u, t, k, out_idx, out_sc):
    itemknn_scores(m, us, it, u, sc.scores)
    return user_topk(sc.scores, it.n[0], u, us, it, sc, k, out_idx, out_sc)


register_steps(ItemKNNKType, rank=itemknn_rank, learn_pre=itemknn_learn_pre, recommend=itemknn_recommend)
