"""Exact top-k over a score vector, excluding what the user already interacted with.

The exclusion set arrives as a mask over item rows (``core.user_topk`` builds it from
the user's history), so excluding costs one array read per candidate.

The ranking protocol of the whole project lives here: candidates are the catalog rows
``0 .. n_cat-1`` (items the stream has seen so far) that are active (not retired) and not
in the user's seen set; the order is score descending, and ties go to the lower row.
The selection keeps a sorted run of at most ``k`` (score, row) pairs: rows are visited
in increasing order and a row displaces the current k-th only when its score is
strictly greater, which is exactly "ties go to the lower row".

The int8 variant scores against a per-row symmetric quantisation of the item factors
(``q8[j] * scale[j] ~= Q[j]``), a quarter of the memory traffic of float32.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit



@njit(cache=True)
def topk_masked(scores, n_cat, excl, active, k, out_idx, out_sc):
    """Fill ``out_idx[:c]``/``out_sc[:c]`` with the best ``c <= k`` rows j < n_cat that are
    active and not excluded (``excl[j] == 0``); return ``c``."""
    cnt = 0
    for j in range(n_cat):
        s = scores[j]
        if cnt == k and not (s > out_sc[k - 1]):
            continue
        if not (s == s):  # NaN never ranks
            continue
        if active[j] == 0 or excl[j] != 0:
            continue
        pos = cnt if cnt < k else k - 1
        while pos > 0 and out_sc[pos - 1] < s:
            out_sc[pos] = out_sc[pos - 1]
            out_idx[pos] = out_idx[pos - 1]
            pos -= 1
        out_sc[pos] = s
        out_idx[pos] = j
        if cnt < k:
            cnt += 1
    for r in range(cnt, k):
        out_idx[r] = -1
        out_sc[r] = -np.inf
    return cnt


@njit(cache=True, inline="always")
def position_in(out_idx, cnt, i):
    """Position of row ``i`` in the first ``cnt`` entries, or -1."""
    for r in range(cnt):
        if out_idx[r] == i:
            return r
    return -1


@njit(cache=True, fastmath=True)
def score_factors(p, Q, item_bias, n_cat, out):
    """``out[j] = item_bias[j] + p . Q[j]`` for the first ``n_cat`` rows."""
    dim = Q.shape[1]
    for j in range(n_cat):
        s = 0.0
        for f in range(dim):
            s += p[f] * Q[j, f]
        out[j] = s + item_bias[j]


@njit(cache=True, fastmath=True)
def score_factors_q8(p, Q8, scale, item_bias, n_cat, out):
    """Same as ``score_factors`` on the int8 copy: ``out[j] = b[j] + scale[j] * (p . q8[j])``."""
    dim = Q8.shape[1]
    for j in range(n_cat):
        s = 0.0
        for f in range(dim):
            s += p[f] * Q8[j, f]
        out[j] = s * scale[j] + item_bias[j]


@njit(cache=True, inline="always")
def quantize_row(Q, j, Q8, scale):
    """Symmetric per-row int8 quantisation of ``Q[j]`` into ``Q8[j]``/``scale[j]``."""
    dim = Q.shape[1]
    m = 0.0
    for f in range(dim):
        a = abs(Q[j, f])
        if a > m:
            m = a
    if m == 0.0:
        scale[j] = 0.0
        for f in range(dim):
            Q8[j, f] = 0
        return
    sc = m / 127.0
    scale[j] = sc
    inv = 1.0 / sc
    for f in range(dim):
        Q8[j, f] = np.int8(math.floor(Q[j, f] * inv + 0.5))


@njit(cache=True)
def quantize_rows(Q, n, Q8, scale):
    for j in range(n):
        quantize_row(Q, j, Q8, scale)
