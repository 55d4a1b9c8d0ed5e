"""Item-to-item collaborative filtering, updated per event, with bounded neighbour lists.

Co-occurrence: when user u interacts with item i, every item j among the user's
``window`` previous items adds ``gamma^d`` to ``C[i, j]`` and ``C[j, i]`` (``d`` = how many
steps back j lies, 0 for the previous item), so only items close together in a history
count, nearer ones more. ``n[i]`` counts item i's interactions. Row ``C[i]`` keeps at
most ``neighbors`` entries, the heavy hitters (``neighbors``: Space-Saving).

An item side whose row capacity (allocated rows: 1024, doubled as the catalog grows) is
at most ``dense_items`` keeps ``C`` as a dense matrix: scanning it is
exact and, at that size, faster than the lists (``state.NeighborPool`` switches once).

Similarity and score: with the user's last ``L`` items r_0 (most recent) .. r_{L-1}::

    sim(r, j) = C[r, j] / (n[r]^beta * n[j]^(1 - beta))          (beta = 1/2: cosine)
    s(u, j)   = sum_l alpha^l * sim(r_l, j)  +  pop_weight * pop(j) / max pop

so candidates come from the user's most recent items' neighbour lists, weighted by
recency, and the small popularity term orders items no recent item points to (and a new
user's whole list). Ranking costs ``L x neighbors`` plus the user's history, whatever
the catalog's size: the candidates are scored, and the items no candidate list holds
come in popularity order (``core.topk_with_popular``), which is exactly the order their
scores (the popularity term alone) give.

Steps (``driver``): ``rank``; ``learn_pre``, before ``observe``, so the window is the
user's items before this one; ``recommend``.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from .core import recent_item, topk_with_popular, user_topk
from .history import mark_history
from .driver import register_steps
from .explain import SRC_KNN, SRC_POPULAR, knn_recent, knn_top_contributor, no_reason
from .layout import NEED_ROOM, OK, bind_constructor, define
from .neighbors import nb_add, room_for
from .popularity import pop_relative

ItemKNNHP = namedtuple("ItemKNNHP", ["window", "gamma", "recent", "alpha", "beta", "pop_weight", "neighbors"])
# n: interactions per item; inv[j] = n[j]^-(1 - beta), kept with n; C: the dense
# co-occurrence matrix of a small catalog, or (1, 1) when the counts live in the neighbour
# lists off/nn/cap/pj/pc/used (``neighbors``, ``state.NeighborPool``); dsc: per-thread
# dense scores; acc/touched: per-thread scratch (acc all zero and touched empty between
# calls) accumulating a user's candidates, vals their scores
# lg_i/lg_j/lg_w/lg_n: the call's log of co-occurrence increments (row i, neighbour j,
# weight) when the item side is shared (capacity 0 otherwise), which owners replay in order
ItemKNNK, ItemKNNKType = define("ItemKNNK", ["n", "inv", "C", "off", "nn", "cap", "pj", "pc", "used", "hp", "dsc", "acc",
                                             "touched", "vals", "cand", "cand_sc", "lg_i", "lg_j", "lg_w", "lg_n"],
                                __name__)


@njit(cache=True)
def _new_itemknnk(n, inv, C, off, nn, cap, pj, pc, used, hp, dsc, acc, touched, vals, cand, cand_sc, lg_i, lg_j, lg_w,
                  lg_n):
    return ItemKNNK(n, inv, C, off, nn, cap, pj, pc, used, hp, dsc, acc, touched, vals, cand, cand_sc, lg_i, lg_j, lg_w,
                    lg_n)


@njit(cache=True, inline="always")
def log_pair(m, i, j, w):
    c = m.lg_n[0]
    if c < m.lg_i.shape[0]:
        m.lg_i[c] = i
        m.lg_j[c] = j
        m.lg_w[c] = w
        m.lg_n[0] = c + 1


@njit(cache=True)
def add_pair(C, off, nn, cap, pj, pc, used, cap_max, i, j, w):
    """Count ``w`` for neighbour j of row i (dense matrix or lists; the owner's replay too)."""
    if C.shape[0] > 1:
        C[i, j] += w
    else:
        nb_add(off, nn, cap, pj, pc, used, cap_max, i, j, w)


@njit(cache=True, inline="always")
def is_dense(m):
    return m.C.shape[0] > 1


@njit(cache=True)
def dense_scores(m, us, it, u, scores):
    """Fill ``scores[:n_cat]`` for user ``u`` from the dense matrix (any row; a new user
    gets popularity only)."""
    hp = m.hp
    C, cnt, inv = m.C, m.n, m.inv
    n_cat = it.n[0]
    for j in range(n_cat):
        scores[j] = 0.0
    w = 1.0
    for l in range(hp.recent):  # a new user has no recent items
        r = recent_item(us, u, l)
        if r < 0:
            break
        if cnt[r] > 0:
            wr = w / math.pow(cnt[r], hp.beta)
            row = C[r]
            for j in range(n_cat):
                scores[j] += wr * row[j]
        w *= hp.alpha
    plin = it.plin
    pmax = plin[it.porder[0]] if n_cat > 0 else 0.0
    f = hp.pop_weight / pmax if pmax > 0.0 else 0.0
    for j in range(n_cat):
        scores[j] = scores[j] * inv[j] + f * plin[j]


bind_constructor(ItemKNNK, _new_itemknnk)


@njit(cache=True, inline="always")
def itemknn_gather(m, us, u):
    """Accumulate the user's candidates into ``m.acc`` (listing them in ``m.touched``);
    returns how many. Candidates' scores: ``candidate_score``. Call ``itemknn_release``
    after."""
    hp = m.hp
    # local names: a structure's field read inside a loop is reloaded at every step
    acc, touched, cnt, off, nn, pj, pc = m.acc, m.touched, m.n, m.off, m.nn, m.pj, m.pc
    c = 0
    w = 1.0
    for l in range(hp.recent):  # a new user has no recent items
        r = recent_item(us, u, l)
        if r < 0:
            break
        if cnt[r] > 0:
            wr = w / math.pow(cnt[r], hp.beta)
            base = off[r]
            for s in range(nn[r]):
                j = pj[base + s]
                a = acc[j]
                touched[c] = j  # kept only if j is new: branch-free
                c += a == 0.0
                acc[j] = a + wr * pc[base + s]
        w *= hp.alpha
    return c


@njit(cache=True, inline="always")
def candidate_score(m, it, j, top):
    """s(u, j) of a gathered candidate (``acc[j]``; 0 for an item no list holds); ``top``:
    the most popular item's row."""
    return m.acc[j] * m.inv[j] + m.hp.pop_weight * pop_relative(it.plin, j, top)


@njit(cache=True, inline="always")
def itemknn_release(m, c):
    for t in range(c):
        m.acc[m.touched[t]] = 0.0


@njit(cache=True, inline="always")
def pop_top(it):
    """The most popular item's row (what popularity terms are relative to)."""
    return it.porder[0]


@njit(cache=True, inline="always")
def itemknn_select(m, us, it, sc, u, c, top, k, out_idx, out_sc):
    """The top-k of the gathered ``c`` candidates and every other item (their popularity).

    A candidate's score is its co-occurrence part plus a popularity part in [0, pop_weight]:
    only candidates whose co-occurrence part is within pop_weight of the k-th best can
    make the list, and only those get the popularity part (an exp) computed."""
    acc, inv, touched, vals = m.acc, m.inv, m.touched, m.vals
    excl, active = sc.excl, it.active
    f = m.hp.pop_weight
    mark_history(us.hoff, us.hlen, us.hpool, u, excl, 1)
    kth = kth_largest(acc, inv, touched, c, excl, active, k, m.cand_sc)
    mark_history(us.hoff, us.hlen, us.hpool, u, excl, 0)
    n = 0
    for t in range(c):
        j = touched[t]
        base = acc[j] * inv[j]
        if base >= kth - f:
            vals[n] = base + f * pop_relative(it.plin, j, top)
            m.cand[n] = j
            n += 1
    return topk_with_popular(m.cand, vals, n, acc, f, top, us, it, sc, u, k, out_idx, out_sc)


@njit(cache=True, inline="always")
def kth_largest(acc, inv, touched, c, excl, active, k, heap):
    """The k-th largest co-occurrence part among the usable candidates (-inf if fewer)."""
    cnt = 0
    for t in range(c):
        j = touched[t]
        if active[j] == 0 or excl[j] != 0:
            continue
        v = acc[j] * inv[j]
        if cnt < k:
            pos = cnt
            cnt += 1
        elif v > heap[k - 1]:
            pos = k - 1
        else:
            continue
        while pos > 0 and heap[pos - 1] < v:
            heap[pos] = heap[pos - 1]
            pos -= 1
        heap[pos] = v
    return heap[k - 1] if cnt == k else -math.inf


@njit(cache=True, inline="always")
def itemknn_topk(m, us, it, sc, u, k, out_idx, out_sc):
    """The user's top-k (see the module docstring)."""
    if is_dense(m):
        dense_scores(m, us, it, u, sc.scores)
        return user_topk(sc.scores, it.n[0], u, us, it, sc, k, out_idx, out_sc)
    c = itemknn_gather(m, us, u)
    got = itemknn_select(m, us, it, sc, u, c, pop_top(it), k, out_idx, out_sc)
    itemknn_release(m, c)
    return got


@njit(cache=True, inline="always")
def itemknn_learn(m, us, it, u, i):
    """Count co-occurrences of i with the user's previous items (call before ``observe``)."""
    hp = m.hp
    off, nn, cap, pj, pc, used, C = m.off, m.nn, m.cap, m.pj, m.pc, m.used, m.C
    dense = is_dense(m)
    if not dense and not room_for(used, pj.shape[0], hp.neighbors, hp.window + 2):
        return NEED_ROOM
    dirty = it.dirty
    w = 1.0
    for back in range(hp.window):
        j = recent_item(us, u, back)
        if j < 0:
            break
        if j != i:
            if dense:
                C[i, j] += w
                C[j, i] += w
            else:
                nb_add(off, nn, cap, pj, pc, used, hp.neighbors, i, j, w)
                nb_add(off, nn, cap, pj, pc, used, hp.neighbors, j, i, w)
            log_pair(m, i, j, w)
            log_pair(m, j, i, w)
            dirty[j] = 1
        w *= hp.gamma
    m.n[i] += 1.0
    m.inv[i] = math.pow(m.n[i], hp.beta - 1.0)
    return OK


@njit(cache=True, inline="always")
def itemknn_rank(m, us, it, sc, b, e, k, out_idx, out_sc):
    return itemknn_topk(m, us, it, sc, b.U[e], k, out_idx, out_sc)


@njit(cache=True, inline="always")
def itemknn_learn_pre(m, us, it, sc, b, e):
    return itemknn_learn(m, us, it, b.U[e], b.I[e])


@njit(cache=True, inline="always")
def itemknn_recommend(m, us, it, sc, u, t, k, out_idx, out_sc):
    return itemknn_topk(m, us, it, sc, u, k, out_idx, out_sc)


@njit(cache=True, inline="always")
def itemknn_explain(m, us, it, sc, u, k, idx, scores, why_item, why_val, why_src):
    """The recent item contributing most to each listed item's score (``explain``); an
    item no recent item points to is on the list for its popularity."""
    rows = np.empty(m.hp.recent, np.int64)
    wts = np.empty(m.hp.recent, np.float64)
    L = knn_recent(m, us, u, rows, wts)
    for r in range(k):
        j = idx[r]
        no_reason(r, why_item, why_val, why_src)
        if j < 0:
            continue
        h, share = knn_top_contributor(m, rows, wts, L, j, scores[r])
        if h >= 0:
            why_src[r] = SRC_KNN
            why_item[r] = h
            why_val[r] = share
        else:
            why_src[r] = SRC_POPULAR


register_steps(ItemKNNKType, rank=itemknn_rank, learn_pre=itemknn_learn_pre, recommend=itemknn_recommend,
               explain=itemknn_explain)


@njit(cache=True)
def recompute_inv(n, inv, rows, beta):
    """``inv`` of ``rows`` from their counts, as ``itemknn_learn`` computes it."""
    for t in range(rows.shape[0]):
        r = rows[t]
        if n[r] > 0:
            inv[r] = math.pow(n[r], beta - 1.0)
