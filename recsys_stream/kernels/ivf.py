"""An inverted-file (IVF) index over item factors (issue #9): candidates for a user's top-k
by ``score = b[j] + p . Q[j]`` (``topk.score_factors``), re-scored exactly.

Space. Item row j is the vector ``x_j = [Q[j], b[j], a_j]`` (``D = dim + 2``) and a
user's query ``y = [p, 1, 0]``, so ``y . x_j`` is the item's score. With ``M > 0``
(``metric="aug"``, the default) ``a_j = sqrt(max(M^2 - |Q[j]|^2 - b[j]^2, 0))``: every
item has norm ``M`` (while its own stays below ``M``), and with ``y`` scaled to norm
``M``, ``|y - x_j|^2 = 2 M^2 - 2 (M / |y|) y . x_j``: the best inner product is the
nearest neighbour (the reduction of Bachrach et al. 2014). With ``M == 0``
(``metric="ip"``) ``a_j = 0``: lists are still cut by Euclidean k-means, and probed by
``y . c``.

Lists. ``nlist`` centroids (k-means on a sample, ``ann.kmeans``) cut the catalog; row j
lives in the list of its nearest centroid (``argmax x . c - |c|^2 / 2``). A list is a run
of slots ``lstart[l] .. lstart[l] + llen[l] - 1`` (capacity ``lcap[l]``) in one arena; a
slot holds the row (``slot_row``), a copy of ``Q[j]`` (``slot_q``: int8 with a per-slot
scale, or float32 with scale 1) and of ``b[j]`` (float32). ``row_list[j]``/``row_slot[j]``
say where row j is (-1: not indexed). Taking a row out of a list moves the list's last
slot into the hole; appending to a full list moves the list to the arena's end with
twice the capacity (amortised O(1)); the owner compacts the arena when it runs out
(``repack``).

Query (``ivf_search``). Score the centroids (``aug``: by the distance of ``y`` scaled to
norm M, i.e. ``(M / |y|) y . c - |c|^2 / 2``; ``ip``: ``y . c``), scan the ``nprobe``
best lists with the stored copies into a heap of the ``cand`` best candidates (rows
``>= n_cat``, retired and excluded ones are skipped where they would enter it, so the
user's items cost nothing and need no over-fetch), re-score those exactly with the
current ``Q`` and ``b``, and return their top-k by the project's ranking protocol
(``topk.topk_candidates``: score descending, ties to the lower row). Returned scores are
exact, whatever the copies' age; only which rows become candidates is approximate.

Updates (``ivf_update``). A changed row is re-copied into its slot, in place: under
SGD rows drift slowly, so a copy a few updates old still finds its row (the models
say how old theirs may be: ``annk``). Every
``check_every``-th updated row is also compared with every centroid and moved to the
nearest list if that is not its own (a sample: the share of checked rows that moved
estimates how many rows sit in a list that is no longer theirs); a row not indexed yet
goes to the nearest list. The centroids stay as built: re-clustering is a new build
(``ann.IVFIndex.needs_rebuild`` says when).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .topk import heap_offer, quantize_into, topk_candidates, topk_masked


# -- vectors and centroids ---------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def augment_row(Q, b, j, M, x):
    """``x = [Q[j], b[j], a_j]`` (see the module docstring); returns 1 if row j's norm is
    above ``M`` (its ``a_j`` is 0: still indexed, less well), else 0."""
    dim = Q.shape[1]
    nn = 0.0
    for f in range(dim):
        v = Q[j, f]
        x[f] = v
        nn += np.float64(v) * v
    bj = b[j]
    x[dim] = bj
    nn += bj * bj
    a = 0.0
    over = 0
    if M > 0.0:
        r = M * M - nn
        if r > 0.0:
            a = math.sqrt(r)
        else:
            over = 1
    x[dim + 1] = a
    return over


@njit(cache=True, nogil=True)
def augment(Q, b, rows, M, X):
    """``X[t] = augment_row`` of ``rows[t]``; returns how many rows had a norm above ``M``."""
    over = 0
    for t in range(rows.shape[0]):
        over += augment_row(Q, b, rows[t], M, X[t])
    return over


@njit(cache=True, nogil=True, fastmath=True)
def _dots_all(x, centT, acc):
    """``acc[c] = x . cent[c]`` over every centroid (centroids stored transposed: the
    loop over centroids vectorises)."""
    D, nlist = centT.shape
    for c in range(nlist):
        acc[c] = 0.0
    for f in range(D):
        xf = x[f]
        if xf == 0.0:
            continue
        for c in range(nlist):
            acc[c] += xf * centT[f, c]


@njit(cache=True, nogil=True)
def nearest_centroid(x, centT, cn, acc):
    """The centroid nearest to ``x`` (``argmax x . c - cn[c]``, ``cn = |c|^2 / 2``; ties to
    the lower centroid)."""
    _dots_all(x, centT, acc)
    best = -1
    bs = -np.inf
    for c in range(acc.shape[0]):
        s = acc[c] - cn[c]
        if s > bs:
            bs = s
            best = c
    return best if best >= 0 else 0


@njit(cache=True, nogil=True)
def centroid_norms(cent, cn):
    for c in range(cent.shape[0]):
        s = 0.0
        for f in range(cent.shape[1]):
            s += np.float64(cent[c, f]) * cent[c, f]
        cn[c] = 0.5 * s


@njit(cache=True, nogil=True)
def lloyd_update(X, assign, cent, state):
    """The centroid step of Lloyd's k-means: every centroid to the mean of the rows of
    ``X`` assigned to it (``assign``); an emptied centroid restarts at a row drawn at
    random from the generator ``state`` (an LCG, uint64). Returns the new state."""
    m, D = X.shape
    nlist = cent.shape[0]
    sums = np.zeros((nlist, D), dtype=np.float64)
    cnt = np.zeros(nlist, dtype=np.int64)
    for i in range(m):
        c = assign[i]
        cnt[c] += 1
        for f in range(D):
            sums[c, f] += X[i, f]
    for c in range(nlist):
        if cnt[c] > 0:
            for f in range(D):
                cent[c, f] = sums[c, f] / cnt[c]
        else:
            state = state * np.uint64(6364136223846793005) + np.uint64(1442695040888963407)
            i = np.int64((state >> np.uint64(33)) % np.uint64(m))
            for f in range(D):
                cent[c, f] = X[i, f]
    return state


# -- slots ----------------------------------------------------------------------


@njit(cache=True, nogil=True, inline="always")
def _put(Q, b, j, s, slot_q, slot_scale, slot_bias, quant):
    """Copy row j's vectors into slot s (int8 with a symmetric per-slot scale, or as is)."""
    dim = Q.shape[1]
    slot_bias[s] = b[j]
    if quant:
        quantize_into(Q, j, slot_q, slot_scale, s)
    else:
        slot_scale[s] = 1.0
        for f in range(dim):
            slot_q[s, f] = Q[j, f]


@njit(cache=True, nogil=True, inline="always")
def _copy_slot(src, dst, slot_row, slot_q, slot_scale, slot_bias, d_row, d_q, d_scale, d_bias, row_slot):
    """Slot ``src`` of one arena into slot ``dst`` of another (or the same) arena."""
    j = slot_row[src]
    d_row[dst] = j
    for f in range(slot_q.shape[1]):
        d_q[dst, f] = slot_q[src, f]
    d_scale[dst] = slot_scale[src]
    d_bias[dst] = slot_bias[src]
    row_slot[j] = dst


@njit(cache=True, nogil=True, inline="always")
def _move_slot(src, dst, slot_row, slot_q, slot_scale, slot_bias, row_slot):
    _copy_slot(src, dst, slot_row, slot_q, slot_scale, slot_bias, slot_row, slot_q, slot_scale, slot_bias, row_slot)


@njit(cache=True, nogil=True, inline="always")
def _take_out(j, lstart, llen, slot_row, slot_q, slot_scale, slot_bias, row_list, row_slot):
    """Remove row j from its list: the list's last slot fills the hole."""
    l = row_list[j]
    last = lstart[l] + llen[l] - 1
    s = row_slot[j]
    if s != last:
        _move_slot(last, s, slot_row, slot_q, slot_scale, slot_bias, row_slot)
    slot_row[last] = -1
    llen[l] -= 1
    row_list[j] = -1
    row_slot[j] = -1


@njit(cache=True, nogil=True, inline="always")
def _room(l, lstart, llen, lcap, used, slot_row, slot_q, slot_scale, slot_bias, row_slot, stats):
    """Make room for one more slot in list l: a full list moves to the arena's end with
    twice the capacity (``stats[5]``: the largest capacity). False if the arena has no
    room for that (nothing changed)."""
    if llen[l] < lcap[l]:
        return True
    cap = max(2 * lcap[l], 8)
    dst = used[0]
    if dst + cap > slot_row.shape[0]:
        return False
    src = lstart[l]
    for r in range(llen[l]):
        _move_slot(src + r, dst + r, slot_row, slot_q, slot_scale, slot_bias, row_slot)
        slot_row[src + r] = -1
    for r in range(llen[l], cap):
        slot_row[dst + r] = -1
    lstart[l] = dst
    lcap[l] = cap
    used[0] = dst + cap
    if cap > stats[5]:
        stats[5] = cap
    return True


@njit(cache=True, nogil=True)
def fill_lists(rows, assign, Q, b, lstart, llen, slot_row, slot_q, slot_scale, slot_bias, row_list, row_slot,
               quant):
    """Put ``rows[t]`` into list ``assign[t]`` (lists empty, with room: a build)."""
    for t in range(rows.shape[0]):
        j = rows[t]
        l = assign[t]
        s = lstart[l] + llen[l]
        llen[l] += 1
        slot_row[s] = j
        _put(Q, b, j, s, slot_q, slot_scale, slot_bias, quant)
        row_list[j] = l
        row_slot[j] = s


@njit(cache=True, nogil=True)
def repack(lstart, llen, lcap, newcap, slot_row, slot_q, slot_scale, slot_bias, n_row, n_q, n_scale, n_bias,
           row_slot):
    """Copy every list into the fresh arena ``n_*`` with capacities ``newcap``, back to
    back; updates ``lstart``/``lcap``/``row_slot``; returns the slots used."""
    n_row[:] = -1
    pos = 0
    for l in range(lstart.shape[0]):
        src = lstart[l]
        for r in range(llen[l]):
            _copy_slot(src + r, pos + r, slot_row, slot_q, slot_scale, slot_bias, n_row, n_q, n_scale, n_bias, row_slot)
        lstart[l] = pos
        lcap[l] = newcap[l]
        pos += newcap[l]
    return pos


@njit(cache=True, nogil=True)
def ivf_update_row(j, Q, b, M, centT, cn, lstart, llen, lcap, used, slot_row, slot_q, slot_scale, slot_bias,
                   row_list, row_slot, quant, check_every, stats, x, acc):
    """Bring row ``j`` up to date with ``Q``/``b`` (``ivf_update``; ``x``/``acc`` work arrays
    of ``D`` and ``nlist`` floats); False, with nothing changed, when the row must move to
    a list that has to grow and the arena has no room for it."""
    over = augment_row(Q, b, j, M, x)
    cur = row_list[j]
    best = cur
    checked = cur < 0 or (check_every > 0 and stats[0] % check_every == 0)
    if checked:
        best = nearest_centroid(x, centT, cn, acc)
    if best != cur:
        if not _room(best, lstart, llen, lcap, used, slot_row, slot_q, slot_scale, slot_bias, row_slot, stats):
            return False
        if cur >= 0:
            _take_out(j, lstart, llen, slot_row, slot_q, slot_scale, slot_bias, row_list, row_slot)
            stats[1] += 1
        else:
            stats[2] += 1
        s = lstart[best] + llen[best]
        llen[best] += 1
        slot_row[s] = j
        row_list[j] = best
        row_slot[j] = s
    _put(Q, b, j, row_slot[j], slot_q, slot_scale, slot_bias, quant)
    stats[0] += 1
    stats[3] += over
    if checked and cur >= 0:
        stats[4] += 1
    return True


@njit(cache=True, nogil=True)
def ivf_update(rows, start, Q, b, M, centT, cn, lstart, llen, lcap, used, slot_row, slot_q, slot_scale, slot_bias,
               row_list, row_slot, quant, check_every, stats):
    """Bring ``rows[start:]`` up to date with ``Q``/``b``: each is re-copied into its slot;
    every ``check_every``-th row updated (counted over calls by ``stats[0]``; 1: all, 0:
    none) is also compared with every centroid and moved to the nearest, and so is a row
    not indexed yet. Returns where it stopped: ``len(rows)``, or the position of a row to
    be moved when the arena has no room for its new list to grow (grow the arena,
    ``repack``, call again from there; nothing of that row was changed). ``stats`` counts
    [rows, moves, adds, rows with a norm above M, rows compared with every centroid, the
    largest list capacity]."""
    x = np.empty(centT.shape[0], dtype=np.float32)
    acc = np.empty(centT.shape[1], dtype=np.float32)
    for t in range(start, rows.shape[0]):
        if not ivf_update_row(rows[t], Q, b, M, centT, cn, lstart, llen, lcap, used, slot_row, slot_q, slot_scale,
                              slot_bias, row_list, row_slot, quant, check_every, stats, x, acc):
            return t
    return rows.shape[0]


@njit(cache=True, nogil=True)
def ivf_remove(rows, lstart, llen, slot_row, slot_q, slot_scale, slot_bias, row_list, row_slot):
    """Take ``rows`` out of the index (rows not in it are left alone); returns how many."""
    c = 0
    for t in range(rows.shape[0]):
        j = rows[t]
        if j < row_list.shape[0] and row_list[j] >= 0:
            _take_out(j, lstart, llen, slot_row, slot_q, slot_scale, slot_bias, row_list, row_slot)
            c += 1
    return c


# -- the query --------------------------------------------------------------------


@njit(cache=True, nogil=True, fastmath=True)
def _approx_scores(p, slot_q, slot_scale, slot_bias, s0, n, out):
    """``out[r] = bias + scale * (p . q)`` of slots ``s0 .. s0 + n - 1``, four at a time."""
    dim = slot_q.shape[1]
    r = 0
    while r + 4 <= n:
        s = s0 + r
        a0 = np.float32(0.0)
        a1 = np.float32(0.0)
        a2 = np.float32(0.0)
        a3 = np.float32(0.0)
        for f in range(dim):
            pf = p[f]
            a0 += pf * np.float32(slot_q[s, f])
            a1 += pf * np.float32(slot_q[s + 1, f])
            a2 += pf * np.float32(slot_q[s + 2, f])
            a3 += pf * np.float32(slot_q[s + 3, f])
        out[r] = slot_bias[s] + slot_scale[s] * a0
        out[r + 1] = slot_bias[s + 1] + slot_scale[s + 1] * a1
        out[r + 2] = slot_bias[s + 2] + slot_scale[s + 2] * a2
        out[r + 3] = slot_bias[s + 3] + slot_scale[s + 3] * a3
        r += 4
    while r < n:
        s = s0 + r
        a = np.float32(0.0)
        for f in range(dim):
            a += p[f] * np.float32(slot_q[s, f])
        out[r] = slot_bias[s] + slot_scale[s] * a
        r += 1


@njit(cache=True, nogil=True)
def exact_score(p, Q, b, j):
    """``b[j] + p . Q[j]``: float32 products summed in order (as ``score_factors`` sums a
    row, to about 1e-7 relative), plus the float64 bias."""
    s = np.float32(0.0)
    for f in range(Q.shape[1]):
        s += p[f] * Q[j, f]
    return s + b[j]


@njit(cache=True, nogil=True)
def probe_order(p, M, centT, cn, nprobe, lists):
    """The ``nprobe`` lists to scan for query ``p``, best first, into ``lists``; returns how
    many (``min(nprobe, nlist)``)."""
    D, nlist = centT.shape
    dim = p.shape[0]
    y = np.zeros(D, dtype=np.float32)
    yy = 1.0
    for f in range(dim):
        y[f] = p[f]
        yy += np.float64(p[f]) * p[f]
    y[dim] = 1.0
    acc = np.empty(nlist, dtype=np.float32)
    _dots_all(y, centT, acc)
    ps = np.empty(nlist, dtype=np.float64)
    if M > 0.0:
        alpha = M / math.sqrt(yy)
        for c in range(nlist):
            ps[c] = alpha * acc[c] - cn[c]
    else:
        for c in range(nlist):
            ps[c] = acc[c]
    z = np.zeros(nlist, dtype=np.uint8)
    one = np.ones(nlist, dtype=np.uint8)
    sc = np.empty(nprobe, dtype=np.float64)
    return topk_masked(ps, nlist, z, one, nprobe, lists, sc)


@njit(cache=True, nogil=True)
def ivf_search(p, Q, b, n_cat, excl, active, M, centT, cn, lstart, llen, slot_row, slot_q, slot_scale, slot_bias,
               nprobe, cand, k, out_idx, out_sc):
    """The top-k rows for query ``p`` (see the module docstring): rows ``< n_cat``, active,
    not excluded (``excl[j] != 0``), by exact score ``b[j] + p . Q[j]`` descending, ties to
    the lower row, among the ``cand`` best of the ``nprobe`` probed lists by their stored
    copies. Fills ``out_idx[:k]``/``out_sc[:k]`` (-1/-inf past the count); returns the
    count. ``cand`` is raised to ``k`` if below it."""
    nlist = centT.shape[1]
    if nprobe > nlist:
        nprobe = nlist
    if cand < k:
        cand = k
    lists = np.empty(max(nprobe, 1), dtype=np.int64)
    npr = probe_order(p, M, centT, cn, nprobe, lists)
    longest = 0
    for r in range(npr):
        if llen[lists[r]] > longest:
            longest = llen[lists[r]]
    buf = np.empty(max(longest, 1), dtype=np.float32)
    hs = np.empty(cand, dtype=np.float64)
    hj = np.empty(cand, dtype=np.int64)
    n = 0
    root = -np.inf
    for r in range(npr):
        l = lists[r]
        s0 = lstart[l]
        m = llen[l]
        _approx_scores(p, slot_q, slot_scale, slot_bias, s0, m, buf)
        for t in range(m):
            v = np.float64(buf[t])
            if n == cand and not (v > root):
                continue
            if not (v == v):
                continue
            j = slot_row[s0 + t]
            if j >= n_cat or active[j] == 0 or excl[j] != 0:
                continue
            n = heap_offer(hs, hj, n, cand, v, j)
            if n == cand:
                root = hs[0]
    for t in range(n):
        hs[t] = exact_score(p, Q, b, hj[t])
    return topk_candidates(hj, hs, n, k, out_idx, out_sc)
