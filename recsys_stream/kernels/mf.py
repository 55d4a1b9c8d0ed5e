"""Biased matrix factorisation for explicit ratings, trained online by SGD.

Model (Koren, Bell & Volinsky 2009)::

    r_hat(u, i) = mu + b_u + b_i + p_u . q_i

``mu`` is the running mean of the ratings seen so far. For each rating, the residual
``e = r - r_hat`` drives

    b_u += eta_u(n_u) * (e - lambda_b * b_u)      eta_u(n) = max(eta_u_min, 1 / (n + c_u))
    b_i += eta_i(n_i) * (e - lambda_b * b_i)      eta_i(n) = max(eta_i_min, 1 / (n + c_i))
    p_u += eta_u * (e * q_i - lambda * p_u)
    q_i += eta_i * (e * p_u - lambda * q_i)

The bias step shrinks with the row's rating count ``n`` (a running mean of residuals,
shrunk by ``c`` pseudo-ratings), floored at ``eta_min`` so a bias keeps tracking drift.
Users and items have their own schedule: a user's taste and mood drift within and
between sessions (a floor), an item's quality hardly does (by default no floor: a
shrunk running mean). On MovieLens 100K the bias schedule lowers RMSE more than the
factor rank does.
With ``adagrad`` on, ``eta_u``/``eta_i`` are row-wise AdaGrad rates
``eta / sqrt(G + 1e-8)`` where ``G`` accumulates the row's mean squared gradient;
otherwise they equal ``eta``. Factors of a row are drawn from N(0, init_std^2) at the
row's first rating, so predicting for an unknown id writes nothing.

Hyper-parameters travel in ``hp`` (float64), indices below.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .common import clip, rng_normal
from .core import EVALUATE, LEARN, PEEK, RANK, WANT_LIST, observe, user_pop_topk, user_topk
from .topk import position_in, quantize_row, score_factors, score_factors_q8

HP_LR, HP_REG, HP_UBIAS_MIN, HP_UBIAS_C, HP_BIAS_REG, HP_INIT, HP_ADAGRAD, HP_LO, HP_HI, HP_MU0, HP_IBIAS_MIN, HP_IBIAS_C = range(12)
HP_SIZE = 12


@njit(cache=True, nogil=True)
def mf_batch(U, I, V, T, F, k, P, Q, bu, bi, cu, ci, gu, gi, glob, hp, Q8, qs, use_q8, core, out, scores):
    """Process events in order; returns -1, or the index of an event after which a
    parameter became NaN/Inf (the caller raises ``ModelDivergedError``)."""
    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl, porder, prank,
     udirty, idirty) = core
    pred_out, pos_out, topk_out, lst_out, lst_sc_out = out
    dim = P.shape[1]
    lr = hp[HP_LR]
    reg = hp[HP_REG]
    ubmin = hp[HP_UBIAS_MIN]
    ubc = hp[HP_UBIAS_C]
    ibmin = hp[HP_IBIAS_MIN]
    ibc = hp[HP_IBIAS_C]
    breg = hp[HP_BIAS_REG]
    init = hp[HP_INIT]
    adagrad = hp[HP_ADAGRAD] != 0.0
    lo = hp[HP_LO]
    hi = hp[HP_HI]
    sc_tmp = np.empty(k, dtype=np.float64)
    pu_old = np.empty(dim, dtype=np.float64)
    for e in range(U.shape[0]):
        u = U[e]
        i = I[e]
        f = F[e]
        known_u = cu[u] > 0
        known_i = ci[i] > 0
        mu = glob[0] / glob[1] if glob[1] > 0 else hp[HP_MU0]
        raw = mu
        if known_u:
            raw += bu[u]
        if known_i:
            raw += bi[i]
        if known_u and known_i:
            s = 0.0
            for d in range(dim):
                s += P[u, d] * Q[i, d]
            raw += s
        if f & EVALUATE:
            pred_out[e] = clip(raw, lo, hi)
        if f & RANK:
            n_cat = dims[1]
            # rows are zero until first learned, so an unknown user scores by item bias
            if use_q8:
                score_factors_q8(P[u], Q8, qs, bi, n_cat, scores)
            else:
                score_factors(P[u], Q, bi, n_cat, scores)
            c = user_topk(scores, n_cat, u, core, k, topk_out[e], sc_tmp)
            pos_out[e] = position_in(topk_out[e], c, i) if i < n_cat else -1
        if f & LEARN:
            r = V[e]
            if not known_u:
                for d in range(dim):
                    P[u, d] = init * rng_normal(rng)
            if not known_i:
                for d in range(dim):
                    Q[i, d] = init * rng_normal(rng)
                if use_q8:
                    quantize_row(Q, i, Q8, qs)
            err = r - raw
            eta_bu = max(ubmin, 1.0 / (cu[u] + ubc))
            eta_bi = max(ibmin, 1.0 / (ci[i] + ibc))
            bu[u] += eta_bu * (err - breg * bu[u])
            bi[i] += eta_bi * (err - breg * bi[i])
            eta_u = lr
            eta_i = lr
            if adagrad:
                gsu = 0.0
                gsi = 0.0
                for d in range(dim):
                    g1 = err * Q[i, d] - reg * P[u, d]
                    g2 = err * P[u, d] - reg * Q[i, d]
                    gsu += g1 * g1
                    gsi += g2 * g2
                gu[u] += gsu / dim
                gi[i] += gsi / dim
                eta_u = lr / math.sqrt(gu[u] + 1e-8)
                eta_i = lr / math.sqrt(gi[i] + 1e-8)
            for d in range(dim):
                pu_old[d] = P[u, d]
            for d in range(dim):
                P[u, d] += eta_u * (err * Q[i, d] - reg * P[u, d])
                Q[i, d] += eta_i * (err * pu_old[d] - reg * Q[i, d])
            if use_q8:
                quantize_row(Q, i, Q8, qs)
            cu[u] += 1
            ci[i] += 1
            glob[0] += r
            glob[1] += 1.0
            if not (math.isfinite(bu[u]) and math.isfinite(bi[i])):
                return e
            for d in range(dim):
                if not (math.isfinite(P[u, d]) and math.isfinite(Q[i, d])):
                    return e
        if not (f & PEEK):
            observe(core, u, i, T[e], 1.0)
        if f & WANT_LIST:
            n_cat = dims[1]
            if cu[u] == 0:  # no rating from this user yet: the popularity list
                user_pop_topk(u, core, n_cat, k, lst_out[e], sc_tmp)
                for r_ in range(k):
                    lst_sc_out[e, r_] = 0.0
            else:
                score_factors(P[u], Q, bi, n_cat, scores)
                user_topk(scores, n_cat, u, core, k, lst_out[e], sc_tmp)
                for r_ in range(k):
                    lst_sc_out[e, r_] = sc_tmp[r_] + mu + bu[u]
    return -1
