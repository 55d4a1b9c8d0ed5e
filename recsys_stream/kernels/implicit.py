"""Implicit (positive-only) matrix factorisation trained per event.

Score: ``s(u, j) = p_u . q_j + b_j``.

Per positive event (u, i), two optional parts:

- ISGD (Vinagre, Jorge & Gama 2014, "Fast incremental matrix factorization for
  recommendation with positive-only feedback"): the target of a positive is 1, so with
  ``e = 1 - p_u . q_i``::

      p_u += eta * (e * q_i - lambda * p_u)
      q_i += eta * (e * p_u - lambda * q_i)

- BPR-style sampled negatives (Rendle et al. 2009): ``n_neg`` items ``j`` drawn uniformly
  from the catalog, skipping ``i`` and the user's own items; for each, with
  ``x = s(u, i) - s(u, j)`` and ``g = sigmoid(-x)``::

      p_u += eta * (g * (q_i - q_j) - lambda * p_u)
      q_i += eta * (g * p_u - lambda * q_i);   b_i += eta * (g - lambda_b * b_i)
      q_j += eta * (-g * p_u - lambda * q_j);  b_j += eta * (-g - lambda_b * b_j)

A factor model needs many negatives per event before it beats popularity; one per event
stays near it. Rows are drawn from N(0, init_std^2) at their first update.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .common import rng_below, rng_normal, sigmoid
from .core import LEARN, PEEK, RANK, WANT_LIST, observe, user_pop_topk, user_topk
from .pairset import pairset_contains
from .topk import position_in, quantize_row, score_factors, score_factors_q8

HP_LR, HP_REG, HP_BREG, HP_INIT, HP_ISGD, HP_NNEG, HP_NEG_TRIES = range(7)
HP_SIZE = 7


@njit(cache=True, inline="always")
def _init_row(M, r, init, rng):
    for d in range(M.shape[1]):
        M[r, d] = init * rng_normal(rng)


@njit(cache=True)
def implicit_learn(u, i, P, Q, b, cu, ci, hp, core, Q8, qs, use_q8, tmp):
    """One positive event's update (ISGD part and sampled BPR pairs); True if finite."""
    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl, porder, prank,
     udirty, idirty) = core
    dim = P.shape[1]
    lr = hp[HP_LR]
    reg = hp[HP_REG]
    breg = hp[HP_BREG]
    init = hp[HP_INIT]
    if cu[u] == 0:
        _init_row(P, u, init, rng)
    if ci[i] == 0:
        _init_row(Q, i, init, rng)
    if hp[HP_ISGD] != 0.0:
        s = 0.0
        for d in range(dim):
            s += P[u, d] * Q[i, d]
        err = 1.0 - s
        for d in range(dim):
            pu = P[u, d]
            P[u, d] += lr * (err * Q[i, d] - reg * pu)
            Q[i, d] += lr * (err * pu - reg * Q[i, d])
    n_cat = dims[1]
    n_neg = int(hp[HP_NNEG])
    tries = int(hp[HP_NEG_TRIES])
    for _ in range(n_neg):
        j = -1
        for _t in range(tries):
            c = rng_below(rng, n_cat) if n_cat > 0 else -1
            if c < 0:
                break
            if c != i and active[c] != 0 and not pairset_contains(seen, u, c):
                j = c
                break
        if j < 0:
            continue
        if ci[j] == 0:  # ci counts every update of the row, negatives included
            _init_row(Q, j, init, rng)
        ci[j] += 1
        idirty[j] = 1
        x = b[i] - b[j]
        for d in range(dim):
            x += P[u, d] * (Q[i, d] - Q[j, d])
        g = sigmoid(-x)
        for d in range(dim):
            pu = P[u, d]
            tmp[d] = Q[i, d] - Q[j, d]
            P[u, d] += lr * (g * tmp[d] - reg * pu)
            Q[i, d] += lr * (g * pu - reg * Q[i, d])
            Q[j, d] += lr * (-g * pu - reg * Q[j, d])
        b[i] += lr * (g - breg * b[i])
        b[j] += lr * (-g - breg * b[j])
        if use_q8:
            quantize_row(Q, j, Q8, qs)
        if not math.isfinite(b[j]):
            return False
    if use_q8:
        quantize_row(Q, i, Q8, qs)
    cu[u] += 1
    ci[i] += 1
    if not (math.isfinite(b[i])):
        return False
    for d in range(dim):
        if not (math.isfinite(P[u, d]) and math.isfinite(Q[i, d])):
            return False
    return True


@njit(cache=True, nogil=True)
def implicit_batch(U, I, T, F, k, P, Q, b, cu, ci, hp, Q8, qs, use_q8, core, out, scores):
    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl, porder, prank,
     udirty, idirty) = core
    pred_out, pos_out, topk_out, lst_out, lst_sc_out = out
    sc_tmp = np.empty(k, dtype=np.float64)
    tmp = np.empty(P.shape[1], dtype=np.float64)
    for e in range(U.shape[0]):
        u = U[e]
        i = I[e]
        f = F[e]
        if f & RANK:
            n_cat = dims[1]
            if use_q8:
                score_factors_q8(P[u], Q8, qs, b, n_cat, scores)
            else:
                score_factors(P[u], Q, b, n_cat, scores)
            c = user_topk(scores, n_cat, u, core, k, topk_out[e], sc_tmp)
            pos_out[e] = position_in(topk_out[e], c, i) if i < n_cat else -1
        if not (f & PEEK):
            observe(core, u, i, T[e], 1.0)
        if f & LEARN:
            if not implicit_learn(u, i, P, Q, b, cu, ci, hp, core, Q8, qs, use_q8, tmp):
                return e
        if f & WANT_LIST:
            n_cat = dims[1]
            if cu[u] == 0:  # not learned yet (e.g. a frequency filter): the popularity list
                user_pop_topk(u, core, n_cat, k, lst_out[e], sc_tmp)
            else:
                score_factors(P[u], Q, b, n_cat, scores)
                user_topk(scores, n_cat, u, core, k, lst_out[e], sc_tmp)
            for r in range(k):
                lst_sc_out[e, r] = sc_tmp[r]
    return -1
