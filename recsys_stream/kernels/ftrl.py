"""FTRL-Proximal logistic regression over hashed sparse features (McMahan et al. 2013,
"Ad Click Prediction: a View from the Trenches", Algorithm 1).

Per coordinate i, with accumulators z_i and n_i, the weight is lazy::

    w_i = 0                                                   if |z_i| <= lambda_1
    w_i = -(z_i - sgn(z_i) lambda_1) / ((beta + sqrt(n_i)) / alpha + lambda_2)   otherwise

and after predicting ``p = sigmoid(sum_i w_i x_i)`` for label ``y``::

    g_i = (p - y) x_i;   sigma_i = (sqrt(n_i + g_i^2) - sqrt(n_i)) / alpha
    z_i += g_i - sigma_i w_i;   n_i += g_i^2

L1 gives exact zeros. Features are 64-bit hashes folded into ``2**bits`` buckets.

The like-model's row for (user u, item j):

- one-hot hashed features: a bias; the user's (id, age bucket, gender, occupation, ...);
  the item's (id, genres, ...); the event's context; with ``HP_CROSSES``, every user
  feature x item feature cross except id x id. With ``HP_NORMALIZE`` their value is
  ``1/sqrt(count)`` (a unit-norm row, so the step does not grow with the row's size).
- with ``HP_STATS``, four real-valued online statistics of the stream so far (counting
  features, as CTR models keep), each shrunk towards the global value by
  ``HP_STATS_PRIOR`` pseudo-events: the logit of the user's and of the item's like rate;
  the item's mean value (rating) minus the global mean; and the user's mean deviation
  from the mean value of the items they chose (a baseline user bias).

``stats`` is ``(user likes, user events, item likes, item events, glob, user deviation
sum, item value sum)`` with ``glob = [likes, events, value sum]``.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .common import hash_combine, sigmoid
from .core import EVALUATE, LEARN, PEEK, RANK, WANT_LIST, observe, user_topk
from .topk import position_in

HP_ALPHA, HP_BETA, HP_L1, HP_L2, HP_CROSSES, HP_NORMALIZE, HP_STATS, HP_STATS_PRIOR = range(8)
HP_SIZE = 8
N_STATS = 4

_BIAS_HASH = np.uint64(0x5BD1E9955BD1E995)
_USER_RATE_HASH = np.uint64(0x2545F4914F6CDD1D)
_ITEM_RATE_HASH = np.uint64(0x9FB21C651E98DF25)
_USER_VALUE_HASH = np.uint64(0x8CB92BA72F3D8DD7)
_ITEM_VALUE_HASH = np.uint64(0xD6E8FEB86659FD93)


@njit(cache=True, inline="always")
def _logit_rate(likes, n, prior_mean, m):
    r = (likes + m * prior_mean) / (n + m)
    r = min(max(r, 0.02), 0.98)
    return math.log(r / (1.0 - r))


@njit(cache=True, inline="always")
def ftrl_weight(z, n, c, alpha, beta, l1, l2):
    zc = z[c]
    if abs(zc) <= l1:
        return 0.0
    sgn = 1.0 if zc > 0.0 else -1.0
    return -(zc - sgn * l1) / ((beta + math.sqrt(n[c])) / alpha + l2)


@njit(cache=True)
def ftrl_predict(idx, val, nnz, z, n, hp, w):
    """Probability for the sparse row ``(idx, val)[:nnz]``; lazy weights land in ``w``."""
    alpha = hp[HP_ALPHA]
    beta = hp[HP_BETA]
    l1 = hp[HP_L1]
    l2 = hp[HP_L2]
    s = 0.0
    for t in range(nnz):
        wt = ftrl_weight(z, n, idx[t], alpha, beta, l1, l2)
        w[t] = wt
        s += wt * val[t]
    if s > 35.0:
        s = 35.0
    elif s < -35.0:
        s = -35.0
    return sigmoid(s)


CHUNK_BITS = 12  # dirty tracking of the weight arrays, by chunks of 4096 coordinates


@njit(cache=True)
def ftrl_update(idx, val, nnz, w, p, y, z, n, hp, dirty):
    """One FTRL-Proximal step for the row just predicted (``w`` from ``ftrl_predict``).

    A coordinate repeated in the row gets its gradient once per occurrence, as if the
    row were given with that coordinate's values summed.
    """
    alpha = hp[HP_ALPHA]
    for t in range(nnz):
        c = idx[t]
        g = (p - y) * val[t]
        sigma = (math.sqrt(n[c] + g * g) - math.sqrt(n[c])) / alpha
        z[c] += g - sigma * w[t]
        n[c] += g * g
        dirty[c >> CHUNK_BITS] = 1


@njit(cache=True)
def like_features(u, j, ufeat, nuf, ifeat, nif, ctx_h, c0, c1, mask, hp, stats, idx, val):
    """Feature row of (user row u, item row j) plus context hashes ``ctx_h[c0:c1]`` (see the
    module docstring); returns the number of entries written to ``idx``/``val``."""
    m = 0
    idx[m] = np.int64(_BIAS_HASH & mask)
    m += 1
    nu = nuf[u]
    ni = nif[j]
    for a in range(nu):
        idx[m] = np.int64(ufeat[u, a] & mask)
        m += 1
    for b in range(ni):
        idx[m] = np.int64(ifeat[j, b] & mask)
        m += 1
    for c in range(c0, c1):
        idx[m] = np.int64(ctx_h[c] & mask)
        m += 1
    if hp[HP_CROSSES] != 0.0:
        for a in range(nu):
            for b in range(ni):
                if a == 0 and b == 0:
                    continue  # user id x item id: too sparse to generalise
                idx[m] = np.int64(hash_combine(ufeat[u, a], ifeat[j, b]) & mask)
                m += 1
    v = 1.0 / math.sqrt(m) if hp[HP_NORMALIZE] != 0.0 else 1.0
    for t in range(m):
        val[t] = v
    if hp[HP_STATS] != 0.0:
        ul, un, il, inn, glob, udev, ival = stats
        prior = hp[HP_STATS_PRIOR]
        p0 = (glob[0] + 1.0) / (glob[1] + 2.0)
        v0 = glob[2] / glob[1] if glob[1] > 0.0 else 0.0
        idx[m] = np.int64(_USER_RATE_HASH & mask)
        val[m] = _logit_rate(ul[u], un[u], p0, prior)
        idx[m + 1] = np.int64(_ITEM_RATE_HASH & mask)
        val[m + 1] = _logit_rate(il[j], inn[j], p0, prior)
        idx[m + 2] = np.int64(_USER_VALUE_HASH & mask)
        val[m + 2] = udev[u] / (un[u] + prior)
        idx[m + 3] = np.int64(_ITEM_VALUE_HASH & mask)
        val[m + 3] = (ival[j] + prior * v0) / (inn[j] + prior) - v0
        m += N_STATS
    return m


@njit(cache=True, inline="always")
def learn_stats(u, i, y, value, stats, prior):
    """Count event (u, i) with like label y and value into the online statistics."""
    ul, un, il, inn, glob, udev, ival = stats
    v0 = glob[2] / glob[1] if glob[1] > 0.0 else value
    udev[u] += value - (ival[i] + prior * v0) / (inn[i] + prior)
    ival[i] += value
    ul[u] += y
    un[u] += 1.0
    il[i] += y
    inn[i] += 1.0
    glob[0] += y
    glob[1] += 1.0
    glob[2] += value


@njit(cache=True)
def _like_scores(u, ufeat, nuf, ifeat, nif, ctx_h, c0, c1, mask, z, n, hp, stats, n_cat, idx, val, w, scores):
    for j in range(n_cat):
        m = like_features(u, j, ufeat, nuf, ifeat, nif, ctx_h, c0, c1, mask, hp, stats, idx, val)
        scores[j] = ftrl_predict(idx, val, m, z, n, hp, w)


@njit(cache=True, nogil=True)
def ftrl_batch(U, I, Y, V, T, F, k, ufeat, nuf, ifeat, nif, ctx_ptr, ctx_h, z, n, zdirty, hp, stats, core, out, scores):
    """Prequential like-model: predict p(like), rank if asked, then learn from label Y."""
    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl, porder, prank,
     udirty, idirty) = core
    pred_out, pos_out, topk_out, lst_out, lst_sc_out = out
    mask = np.uint64(z.shape[0] - 1)
    cap = 1 + ufeat.shape[1] + ifeat.shape[1] + ufeat.shape[1] * ifeat.shape[1]
    maxctx = 0
    for e in range(U.shape[0]):
        if ctx_ptr[e + 1] - ctx_ptr[e] > maxctx:
            maxctx = ctx_ptr[e + 1] - ctx_ptr[e]
    cap += maxctx + N_STATS
    idx = np.empty(cap, dtype=np.int64)
    val = np.empty(cap, dtype=np.float64)
    w = np.empty(cap, dtype=np.float64)
    sc_tmp = np.empty(k, dtype=np.float64)
    for e in range(U.shape[0]):
        u = U[e]
        i = I[e]
        f = F[e]
        c0 = ctx_ptr[e]
        c1 = ctx_ptr[e + 1]
        if f & RANK:
            n_cat = dims[1]
            _like_scores(u, ufeat, nuf, ifeat, nif, ctx_h, c0, c1, mask, z, n, hp, stats, n_cat, idx, val, w, scores)
            c = user_topk(scores, n_cat, u, core, k, topk_out[e], sc_tmp)
            pos_out[e] = position_in(topk_out[e], c, i) if i < n_cat else -1
        m = like_features(u, i, ufeat, nuf, ifeat, nif, ctx_h, c0, c1, mask, hp, stats, idx, val)
        p = ftrl_predict(idx, val, m, z, n, hp, w)
        if f & EVALUATE:
            pred_out[e] = p
        if f & LEARN:
            ftrl_update(idx, val, m, w, p, Y[e], z, n, hp, zdirty)
            learn_stats(u, i, Y[e], V[e], stats, hp[HP_STATS_PRIOR])
            for t in range(m):
                c = idx[t]
                if not (math.isfinite(z[c]) and math.isfinite(n[c])):
                    return e
        if not (f & PEEK):
            observe(core, u, i, T[e], 1.0)
        if f & WANT_LIST:
            _like_scores(u, ufeat, nuf, ifeat, nif, ctx_h, c0, c1, mask, z, n, hp, stats, dims[1], idx, val, w, scores)
            user_topk(scores, dims[1], u, core, k, lst_out[e], sc_tmp)
            for r in range(k):
                lst_sc_out[e, r] = sc_tmp[r]
    return -1
