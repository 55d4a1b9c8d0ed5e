"""Reasons for a list: why each item is on it, computed in the kernel at the event.

A model's ``explain`` step (``driver``) fills, for each row ``idx[r]`` of a list just
computed, ``why_item[r]`` (an item row of the user's own recent history, or -1),
``why_val[r]`` and ``why_src[r]`` (a bit set of the sources that proposed the item):

- ``SRC_KNN``: item-to-item co-occurrence. ``why_item`` is the user's recent item whose
  co-occurrence counts contribute most to the item's score, ``why_val`` its share of the
  score (in (0, 1]: the score also holds the other recent items and the popularity term);
- ``SRC_FACTORS``: a factor model. ``why_item`` is the user's recent item whose factor
  vector is most similar to the item's (cosine), ``why_val`` that cosine;
- ``SRC_POPULAR``: the popularity list (a new user's, or items no recent item points to);
- 0: the model gives no reason of its own (``ftrl``: a logistic model over hashed
  features).

``WHY_SIMILAR`` in ``why_src`` says that ``why_item`` is a factor reason (a similarity),
not a share. The hybrid sets every bit of the sources whose candidate lists held the
item, and the item-to-item reason when one exists, else the factor one.

"Recent" is the user's ring of last events (``UserK.recent``): the reasons name items the
user really had, the ones a person remembers. Only lists flagged ``EXPLAIN`` pay for this.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .core import recent_item
from .neighbors import nb_find

SRC_KNN = 1
SRC_FACTORS = 2
SRC_POPULAR = 4
WHY_SIMILAR = 8


@njit(cache=True, inline="always")
def _count(knn, r, j):
    """The co-occurrence count C[r, j] (dense matrix or row r's neighbour list)."""
    if knn.C.shape[0] > 1:
        return knn.C[r, j]
    s = nb_find(knn.off, knn.nn, knn.pj, r, j)
    return knn.pc[s] if s >= 0 else 0.0


@njit(cache=True)
def knn_recent(knn, us, u, rows, wts):
    """The user's distinct recent items (``rows[:L]``) and each one's weight in the
    item-to-item score (``wts``: the sum over its occurrences among the last ``recent``
    of ``alpha^back / n^beta``, as ``kernels.itemknn`` gathers them); returns L."""
    hp = knn.hp
    L = 0
    w = 1.0
    for back in range(hp.recent):
        r = recent_item(us, u, back)
        if r < 0:
            break
        if knn.n[r] > 0:
            wr = w / math.pow(knn.n[r], hp.beta)
            t = 0
            while t < L and rows[t] != r:
                t += 1
            if t == L:
                rows[L] = r
                wts[L] = 0.0
                L += 1
            wts[t] += wr
        w *= hp.alpha
    return L


@njit(cache=True)
def knn_top_contributor(knn, rows, wts, L, j, score):
    """(row, share): of the recent items ``rows[:L]`` (``knn_recent``), the one
    contributing most to item j's item-to-item score ``score`` (ties: the lower row), or
    (-1, 0) when none does."""
    best = -1
    best_c = 0.0
    for t in range(L):
        r = rows[t]
        if r == j:
            continue
        c = wts[t] * _count(knn, r, j)
        if c > best_c or (c == best_c and c > 0.0 and r < best):
            best_c = c
            best = r
    if best < 0 or not (score > 0.0):
        return -1, 0.0
    return best, min(1.0, best_c * knn.inv[j] / score)


@njit(cache=True)
def knn_because(knn, us, u, j, score):
    """``knn_top_contributor`` for one item (the recent items gathered for it alone)."""
    rows = np.empty(knn.hp.recent, np.int64)
    wts = np.empty(knn.hp.recent, np.float64)
    L = knn_recent(knn, us, u, rows, wts)
    return knn_top_contributor(knn, rows, wts, L, j, score)


@njit(cache=True)
def factor_because(Q, us, u, j, back):
    """(row, cosine): the item among the user's last ``back`` events whose row of ``Q`` is
    most similar to item j's (ties: the lower row), or (-1, 0)."""
    dim = Q.shape[1]
    nj = 0.0
    for f in range(dim):
        nj += Q[j, f] * Q[j, f]
    best = -1
    best_s = -2.0
    for l in range(back):
        r = recent_item(us, u, l)
        if r < 0:
            break
        if r == j:
            continue
        d = 0.0
        nr = 0.0
        for f in range(dim):
            d += Q[j, f] * Q[r, f]
            nr += Q[r, f] * Q[r, f]
        s = d / math.sqrt(nj * nr) if nj > 0.0 and nr > 0.0 else 0.0
        if s > best_s or (s == best_s and r < best):
            best_s = s
            best = r
    if best < 0:
        return -1, 0.0
    return best, best_s


@njit(cache=True, inline="always")
def no_reason(r, why_item, why_val, why_src):
    """Entry r of a list: no reason yet (and none for a padding entry)."""
    why_item[r] = -1
    why_val[r] = 0.0
    why_src[r] = 0


@njit(cache=True, inline="always")
def explain_popular(k, idx, why_item, why_val, why_src):
    for r in range(k):
        why_item[r] = -1
        why_val[r] = 0.0
        why_src[r] = SRC_POPULAR if idx[r] >= 0 else 0


@njit(cache=True, inline="always")
def explain_factors(Q, known, us, u, k, idx, why_item, why_val, why_src):
    """Factor models: the most similar recent item (``known``: the model has learned the
    user; otherwise the list was the popularity list)."""
    if not known:
        explain_popular(k, idx, why_item, why_val, why_src)
        return
    back = us.recent.shape[1]
    for r in range(k):
        j = idx[r]
        no_reason(r, why_item, why_val, why_src)
        if j < 0:
            continue
        h, s = factor_because(Q, us, u, j, back)
        why_src[r] = SRC_FACTORS | WHY_SIMILAR
        if h >= 0:
            why_item[r] = h
            why_val[r] = s
