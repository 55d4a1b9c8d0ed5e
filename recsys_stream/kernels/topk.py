"""Exact top-k over a score vector, excluding what the user already interacted with.

The exclusion set arrives as a mask over item rows (``core.user_topk`` builds it from
the user's history), so excluding costs one array read per candidate.

The ranking protocol of the whole project lives here: candidates are the catalog rows
``0 .. n_cat-1`` (items the stream has seen so far) that are active (not retired) and not
in the user's seen set; the order is score descending, and ties go to the lower row.
The selection keeps a sorted run of at most ``k`` (score, row) pairs: rows are visited
in increasing order and a row displaces the current k-th only when its score is
strictly greater, which is exactly "ties go to the lower row".

``topk_masked`` scans rows in increasing order, so "ties to the lower row" needs no
comparison of rows; ``topk_candidates`` selects from an unordered candidate list (the
hybrid's union of sources, an index's candidates) and compares rows on ties, giving the
same order as a full scan would over the same scores.

The int8 variant scores against a per-row symmetric quantisation of the item factors
(``q8[j] * scale[j] ~= Q[j]``), a quarter of the memory traffic of float32.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit



@njit(cache=True, inline="always")
def _worse(sa, ja, sb, jb):
    """Is (score sa, row ja) ranked after (sb, jb)? Score descending, then row ascending."""
    return sa < sb or (sa == sb and ja > jb)


@njit(cache=True, inline="always")
def _sift_down(hs, hj, n, pos):
    # min-heap by rank order: the root is the worst kept candidate
    while True:
        c = 2 * pos + 1
        if c >= n:
            return
        if c + 1 < n and _worse(hs[c + 1], hj[c + 1], hs[c], hj[c]):
            c += 1
        if _worse(hs[c], hj[c], hs[pos], hj[pos]):
            hs[c], hs[pos] = hs[pos], hs[c]
            hj[c], hj[pos] = hj[pos], hj[c]
            pos = c
        else:
            return


@njit(cache=True)
def topk_masked(scores, n_cat, excl, active, k, out_idx, out_sc):
    """Fill ``out_idx[:c]``/``out_sc[:c]`` with the best ``c <= k`` rows j < n_cat that are
    active and not excluded (``excl[j] == 0``); return ``c``.

    Small k keeps a sorted run (insertion); larger k a binary heap, sorted at the end. The
    k-th score so far lives in a local (``kth``): most rows fail the first comparison, and
    reading the bar from memory at every row (it could alias ``scores``) was half the cost.
    """
    if k > 16:
        return _topk_heap(scores, n_cat, excl, active, k, out_idx, out_sc)
    cnt = 0
    kth = -np.inf
    for j in range(n_cat):
        s = scores[j]
        if cnt == k and not (s > kth):
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
        kth = out_sc[k - 1] if cnt == k else -np.inf
    for r in range(cnt, k):
        out_idx[r] = -1
        out_sc[r] = -np.inf
    return cnt


@njit(cache=True, inline="always")
def heap_offer(hs, hj, n, cap, s, j):
    """Offer (s, j) to a min-heap by rank order (the root is the worst kept) holding ``n``
    of at most ``cap``: pushed while there is room, else it replaces the root (the caller
    has checked that it beats the root); returns the new count."""
    if n < cap:
        hs[n] = s
        hj[n] = j
        pos = n
        while pos > 0:
            parent = (pos - 1) // 2
            if not _worse(hs[pos], hj[pos], hs[parent], hj[parent]):
                break
            hs[pos], hs[parent] = hs[parent], hs[pos]
            hj[pos], hj[parent] = hj[parent], hj[pos]
            pos = parent
        return n + 1
    pos = 0  # s replaces the root: move the hole down, without swaps
    while True:
        c = 2 * pos + 1
        if c >= n:
            break
        if c + 1 < n and _worse(hs[c + 1], hj[c + 1], hs[c], hj[c]):
            c += 1
        if not _worse(hs[c], hj[c], s, j):
            break
        hs[pos] = hs[c]
        hj[pos] = hj[c]
        pos = c
    hs[pos] = s
    hj[pos] = j
    return n


@njit(cache=True)
def _topk_heap(scores, n_cat, excl, active, k, out_idx, out_sc):
    hs = out_sc
    hj = out_idx
    n = 0
    root = -np.inf  # the worst kept score, in a local (see topk_masked)
    for j in range(n_cat):
        s = scores[j]
        if n == k and not (s > root):  # rows only increase: a tie with the root loses
            continue
        if not (s == s):
            continue
        if active[j] == 0 or excl[j] != 0:
            continue
        n = heap_offer(hs, hj, n, k, s, j)
        if n == k:
            root = hs[0]
    # heap sort: repeatedly move the worst to the end
    for end in range(n - 1, 0, -1):
        hs[0], hs[end] = hs[end], hs[0]
        hj[0], hj[end] = hj[end], hj[0]
        _sift_down(hs, hj, end, 0)
    for r in range(n, k):
        out_idx[r] = -1
        out_sc[r] = -np.inf
    return n


@njit(cache=True)
def topk_candidates(cand, vals, m, k, out_idx, out_sc):
    """Top-k of the ``m`` candidates ``cand[t]`` with scores ``vals[t]`` (rows distinct, in
    any order), by score descending and row ascending; returns the count. NaN never ranks."""
    cnt = 0
    for t in range(m):
        j = cand[t]
        s = vals[t]
        if not (s == s):
            continue
        if cnt == k and not _worse(out_sc[k - 1], out_idx[k - 1], s, j):
            continue
        pos = cnt if cnt < k else k - 1
        while pos > 0 and _worse(out_sc[pos - 1], out_idx[pos - 1], s, j):
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
    """``out[j] = item_bias[j] + p . Q[j]`` for the first ``n_cat`` rows.

    Four rows at a time with float32 sums (the factors' own precision): the four dot
    products share every load of ``p`` and vectorise, 1.5-2x faster than one row at a time
    with float64 sums, for a difference of about 1e-7 relative in a score."""
    dim = Q.shape[1]
    j = 0
    while j + 4 <= n_cat:
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        s3 = np.float32(0.0)
        for f in range(dim):
            pf = p[f]
            s0 += pf * Q[j, f]
            s1 += pf * Q[j + 1, f]
            s2 += pf * Q[j + 2, f]
            s3 += pf * Q[j + 3, f]
        out[j] = s0 + item_bias[j]
        out[j + 1] = s1 + item_bias[j + 1]
        out[j + 2] = s2 + item_bias[j + 2]
        out[j + 3] = s3 + item_bias[j + 3]
        j += 4
    while j < n_cat:
        s = np.float32(0.0)
        for f in range(dim):
            s += p[f] * Q[j, f]
        out[j] = s + item_bias[j]
        j += 1


@njit(cache=True, fastmath=True)
def score_factors_q8(p, Q8, scale, item_bias, n_cat, out):
    """Same as ``score_factors`` on the int8 copy: ``out[j] = b[j] + scale[j] * (p . q8[j])``."""
    dim = Q8.shape[1]
    j = 0
    while j + 4 <= n_cat:
        s0 = np.float32(0.0)
        s1 = np.float32(0.0)
        s2 = np.float32(0.0)
        s3 = np.float32(0.0)
        for f in range(dim):
            pf = p[f]
            s0 += pf * np.float32(Q8[j, f])
            s1 += pf * np.float32(Q8[j + 1, f])
            s2 += pf * np.float32(Q8[j + 2, f])
            s3 += pf * np.float32(Q8[j + 3, f])
        out[j] = s0 * scale[j] + item_bias[j]
        out[j + 1] = s1 * scale[j + 1] + item_bias[j + 1]
        out[j + 2] = s2 * scale[j + 2] + item_bias[j + 2]
        out[j + 3] = s3 * scale[j + 3] + item_bias[j + 3]
        j += 4
    while j < n_cat:
        s = np.float32(0.0)
        for f in range(dim):
            s += p[f] * np.float32(Q8[j, f])
        out[j] = s * scale[j] + item_bias[j]
        j += 1


@njit(cache=True, inline="always")
def quantize_row(Q, j, Q8, scale):
    """Symmetric per-row int8 quantisation of ``Q[j]`` into ``Q8[j]``/``scale[j]``."""
    quantize_into(Q, j, Q8, scale, j)


@njit(cache=True, inline="always")
def quantize_into(Q, j, Q8, scale, s):
    """``quantize_row`` of ``Q[j]`` into row ``s`` of ``Q8``/``scale`` (an index's slot)."""
    dim = Q.shape[1]
    m = 0.0
    for f in range(dim):
        a = abs(Q[j, f])
        if a > m:
            m = a
    if m == 0.0:
        scale[s] = 0.0
        for f in range(dim):
            Q8[s, f] = 0
        return
    sc = m / 127.0
    scale[s] = sc
    inv = 1.0 / sc
    for f in range(dim):
        Q8[s, f] = np.int8(math.floor(Q[j, f] * inv + 0.5))


@njit(cache=True)
def quantize_rows(Q, n, Q8, scale):
    for j in range(n):
        quantize_row(Q, j, Q8, scale)
