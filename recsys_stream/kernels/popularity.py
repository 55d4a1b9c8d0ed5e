"""Recency-decayed popularity, kept in the log domain (forward decay: Cormode, Shkapenyuk,
Srivastava & Xu 2009).

An interaction at event time ``t`` adds ``exp(rate * t)`` to its item's mass, with
``rate = ln 2 / half_life``; the item's decayed count as of any time ``T`` is then
``mass * exp(-rate * T)``, so every item compares with every other by its mass alone and an
update costs O(1). The mass is kept as its logarithm ``lp``::

    lp <- logaddexp(lp, rate * t)         (lp = -inf: never seen)

which never overflows or underflows for any finite event time, so no landmark has to move
and no item's score is ever rescaled: each item's value depends on its own events only
(an item row can be owned and merged on its own), and a wild timestamp cannot turn every
score into NaN. ``rate = 0`` gives plain counts (``lp = log(count)``).

``order``/``rank`` keep the items by ``lp`` (descending, ties to the lower row), sorted in
the head only: the first ``HEAD`` places hold the ``HEAD`` most popular items in order, the
places after them (the tail) the others in no particular order. An update only raises one
item's value: an item of the head moves up within it, an item of the tail that now ranks
before the head's last takes its place and moves up, any other stays (``pop_place``), so
an update costs at most ``HEAD`` moves whatever the catalog's size. (With every place
sorted, a long-tail item's event moved it past every item with fewer recent events:
tens of thousands of places per event at 10^6 items, most of the time of every model.)
The popularity top-k of a user is the first k unexcluded entries of the head, and only a
user who excludes nearly all of it makes ``pop_topk`` select the rest from the tail
(exact either way). A catalog of at most ``HEAD`` items is sorted in full.

Scoring needs popularity relative to the top item for every candidate; an ``exp`` per
item per event would cost more than the rest of the ranking, so a derived linear copy is
kept: ``plin[i] = exp(lp[i] - ref)`` for a reference ``ref``, the largest mass rounded down
to a multiple of 300, that moves (every value recomputed) only when the largest mass
passes the next multiple, which at a half-life of a day happens once per ~300 days of event
time. ``plin`` is rebuilt from ``lp``, never stored, and ``ref`` is a function of ``lp``:
a restored state, an owner's and every replica's agree on it bit for bit.

``meta`` is ``[rate, ref]`` (``ref`` -inf before the first interaction).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit


@njit(cache=True, inline="always")
def logaddexp(a, b):
    if a == -np.inf:
        return b
    if b == -np.inf:
        return a
    if a > b:
        return a + math.log1p(math.exp(b - a))
    return b + math.log1p(math.exp(a - b))


@njit(cache=True, inline="always")
def pop_weight(meta, t):
    """The log of one interaction's mass at event time ``t``."""
    return meta[0] * t


REBASE_AT = 300.0
# places of the order kept sorted (the head); 4096 keeps every small catalog (ML-100K's
# 1,682 items) in one sorted order, and bounds an update's moves at large ones
HEAD = 4096


@njit(cache=True)
def pop_learn(lp, plin, meta, n, i, t, order, rank):
    """Add one interaction with item row ``i`` at event time ``t`` (``n``: catalog extent)."""
    lp[i] = logaddexp(lp[i], pop_weight(meta, t))
    pop_linear(lp, plin, meta, n, i)
    pop_place(lp, order, rank, i)


@njit(cache=True, inline="always")
def pop_reference(x):
    """The reference for a largest mass ``x``: a multiple of ``REBASE_AT``, so that it is a
    function of the state alone (a restored or merged state recomputes the same one)."""
    return REBASE_AT * math.floor(x / REBASE_AT)


@njit(cache=True, inline="always")
def pop_linear(lp, plin, meta, n, i):
    """Bring ``plin[i]`` in line with ``lp[i]`` (moving the reference if needed)."""
    ref = pop_reference(lp[i])
    if meta[1] == -np.inf or ref > meta[1]:
        meta[1] = ref
        for j in range(n):
            plin[j] = 0.0 if lp[j] == -np.inf else math.exp(lp[j] - ref)
    plin[i] = math.exp(lp[i] - meta[1])


@njit(cache=True, inline="always")
def pop_now(lp, meta, i, t):
    """Decayed count of item ``i`` as of time ``t`` (for display)."""
    if lp[i] == -np.inf:
        return 0.0
    return math.exp(lp[i] - meta[0] * t)


@njit(cache=True, inline="always")
def pop_relative(plin, i, top):
    """Item ``i``'s popularity relative to row ``top``'s: in [0, 1] when ``top`` is the most
    popular (``plin[top] > 0``)."""
    return plin[i] / plin[top] if plin[top] > 0.0 else 0.0


@njit(cache=True, inline="always")
def _before(lp, a, b):
    """Does item a rank before item b (value descending, then row ascending)?"""
    return lp[a] > lp[b] or (lp[a] == lp[b] and a < b)


@njit(cache=True, inline="always")
def pop_place(lp, order, rank, i):
    """Move item ``i`` up the order after its value grew (ties: lower row first): within
    the head, or from the tail into the head when it now ranks before the head's last
    (which takes its place in the tail)."""
    r = rank[i]
    if r >= HEAD:
        last = order[HEAD - 1]
        if not _before(lp, i, last):
            return  # stays in the tail
        order[r] = last
        rank[last] = r
        r = HEAD - 1
    s = lp[i]
    while r > 0:
        j = order[r - 1]
        if lp[j] > s or (lp[j] == s and j < i):
            break
        order[r] = j
        rank[j] = r
        r -= 1
    order[r] = i
    rank[i] = r


@njit(cache=True)
def pop_resort(lp, plin, meta, n_items, order, rank):
    """Rebuild the order and the linear copy from scratch (after a restore or a merge of
    many rows)."""
    o = np.argsort(-lp[:n_items], kind="mergesort")
    for r in range(n_items):
        order[r] = o[r]
        rank[o[r]] = r
    if n_items > 0 and lp[o[0]] != -np.inf:
        meta[1] = pop_reference(lp[o[0]])
    for j in range(n_items):
        plin[j] = 0.0 if lp[j] == -np.inf or meta[1] == -np.inf else math.exp(lp[j] - meta[1])


@njit(cache=True)
def pop_topk(lp, plin, order, n_cat, excl, active, k, out_idx, out_sc):
    """The first k items of the popularity order that are active and not excluded; scores
    are relative to the most popular item. Past the head, the rest come from the tail,
    selected by value (ties to the lower row), as a sorted order would give them."""
    c = 0
    top = order[0] if n_cat > 0 else 0
    for r in range(min(n_cat, HEAD)):
        if c == k:
            break
        j = order[r]
        if active[j] == 0 or excl[j] != 0:
            continue
        out_idx[c] = j
        c += 1
    if c < k and n_cat > HEAD:
        c = _tail_best(lp, order, n_cat, excl, active, c, k, out_idx)
    for r in range(c):
        out_sc[r] = pop_relative(plin, out_idx[r], top)
    for r in range(c, k):
        out_idx[r] = -1
        out_sc[r] = -np.inf
    return c


@njit(cache=True)
def _tail_best(lp, order, n_cat, excl, active, c, k, out_idx):
    """Fill ``out_idx[c:k]`` with the best usable items of the tail (places ``HEAD`` ..
    ``n_cat - 1``), by value and then row; returns the new count."""
    base = c
    for r in range(HEAD, n_cat):
        j = order[r]
        if active[j] == 0 or excl[j] != 0:
            continue
        if c == k and not _before(lp, j, out_idx[k - 1]):
            continue
        pos = c if c < k else k - 1
        while pos > base and _before(lp, j, out_idx[pos - 1]):
            out_idx[pos] = out_idx[pos - 1]
            pos -= 1
        out_idx[pos] = j
        if c < k:
            c += 1
    return c


@njit(cache=True)
def pop_refresh(lp, plin, meta, n, order, rank, rows):
    """``lp`` of ``rows`` changed from outside (an owner's values): their linear copies and
    places in the order (values only grow, but rounding can lower one by an ulp: such an
    item stays put, a harmless near-tie)."""
    for t in range(rows.shape[0]):
        i = rows[t]
        if i < n and lp[i] != -np.inf:
            pop_linear(lp, plin, meta, n, i)
            pop_place(lp, order, rank, i)
