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
otherwise they equal ``eta``. A user's factors are drawn from N(0, init_std^2) at their
first rating, an item's when its row is created, from its id (``init``); predicting for an
unknown id writes nothing, and an item without a rating contributes no factor term.

Steps (``driver``): ``prep`` computes the prediction once; ``rank`` (scores
``b_i + p_u . q_i``, the user's part of the sum being the same for every item),
``predict`` and ``learn_pre`` (before ``observe``) use it.
"""

from __future__ import annotations

import math
from collections import namedtuple

from numba import njit

from .common import clip
from .core import user_pop_topk, user_topk
from .driver import register_steps
from .explain import explain_factors
from .layout import DIVERGED, OK, bind_constructor, define
from .init import init_user_row
from .topk import quantize_row, score_factors, score_factors_q8

MFHP = namedtuple("MFHP", ["lr", "reg", "user_bias_lr_min", "user_bias_prior", "item_bias_lr_min", "item_bias_prior",
                           "bias_reg", "init_std", "adagrad", "rating_min", "rating_max", "quantized"])
# tmp: [raw prediction, user known, item known, mu] of the current event (set by prep)
MFK, MFKType = define("MFK", ['P', 'bu', 'cu', 'gu', 'Q', 'bi', 'ci', 'gi', 'glob', 'Q8', 'qs', 'hp', 'tmp'], __name__)


@njit(cache=True)
def _new_mfk(P, bu, cu, gu, Q, bi, ci, gi, glob, Q8, qs, hp, tmp):
    return MFK(P, bu, cu, gu, Q, bi, ci, gi, glob, Q8, qs, hp, tmp)


bind_constructor(MFK, _new_mfk)


@njit(cache=True, inline="always")
def _mu(m):
    g = m.glob
    return g[0] / g[1] if g[1] > 0 else 0.5 * (m.hp.rating_min + m.hp.rating_max)


@njit(cache=True, inline="always")
def mf_prep(m, us, it, sc, b, e):
    u = b.U[e]
    i = b.I[e]
    known_u = m.cu[u] > 0
    known_i = m.ci[i] > 0
    mu = _mu(m)
    raw = mu
    if known_u:
        raw += m.bu[u]
    if known_i:
        raw += m.bi[i]
    if known_u and known_i:
        s = 0.0
        for d in range(m.P.shape[1]):
            s += m.P[u, d] * m.Q[i, d]
        raw += s
    m.tmp[0] = raw
    m.tmp[1] = 1.0 if known_u else 0.0
    m.tmp[2] = 1.0 if known_i else 0.0
    m.tmp[3] = mu


@njit(cache=True, inline="always")
def mf_rank(m, us, it, sc, b, e, k, out_idx, out_sc):
    u = b.U[e]
    n_cat = it.n[0]
    # rows are zero until first learned, so an unknown user scores by item bias
    if m.hp.quantized:
        score_factors_q8(m.P[u], m.Q8, m.qs, m.bi, n_cat, sc.scores)
    else:
        score_factors(m.P[u], m.Q, m.bi, n_cat, sc.scores)
    return user_topk(sc.scores, n_cat, u, us, it, sc, k, out_idx, out_sc)


@njit(cache=True, inline="always")
def mf_predict(m, us, it, sc, b, e):
    return clip(m.tmp[0], m.hp.rating_min, m.hp.rating_max)


@njit(cache=True, inline="always")
def mf_learn(m, us, it, sc, b, e):
    u = b.U[e]
    i = b.I[e]
    hp = m.hp
    P, Q = m.P, m.Q
    dim = P.shape[1]
    raw = m.tmp[0]
    r = b.V[e]
    if m.tmp[1] == 0.0:
        init_user_row(P, u, hp.init_std, us)
    if m.tmp[2] == 0.0 and hp.quantized:
        quantize_row(Q, i, m.Q8, m.qs)
    err = r - raw
    eta_bu = max(hp.user_bias_lr_min, 1.0 / (m.cu[u] + hp.user_bias_prior))
    eta_bi = max(hp.item_bias_lr_min, 1.0 / (m.ci[i] + hp.item_bias_prior))
    m.bu[u] += eta_bu * (err - hp.bias_reg * m.bu[u])
    m.bi[i] += eta_bi * (err - hp.bias_reg * m.bi[i])
    lr, reg = hp.lr, hp.reg
    eta_u = lr
    eta_i = lr
    if hp.adagrad:
        gsu = 0.0
        gsi = 0.0
        for d in range(dim):
            g1 = err * Q[i, d] - reg * P[u, d]
            g2 = err * P[u, d] - reg * Q[i, d]
            gsu += g1 * g1
            gsi += g2 * g2
        m.gu[u] += gsu / dim
        m.gi[i] += gsi / dim
        eta_u = lr / math.sqrt(m.gu[u] + 1e-8)
        eta_i = lr / math.sqrt(m.gi[i] + 1e-8)
    for d in range(dim):
        pu = P[u, d]
        P[u, d] += eta_u * (err * Q[i, d] - reg * pu)
        Q[i, d] += eta_i * (err * pu - reg * Q[i, d])
    if hp.quantized:
        quantize_row(Q, i, m.Q8, m.qs)
    m.cu[u] += 1
    m.ci[i] += 1
    m.glob[0] += r
    m.glob[1] += 1.0
    if not (math.isfinite(m.bu[u]) and math.isfinite(m.bi[i])):
        return DIVERGED
    for d in range(dim):
        if not (math.isfinite(P[u, d]) and math.isfinite(Q[i, d])):
            return DIVERGED
    return OK


@njit(cache=True, inline="always")
def mf_recommend(m, us, it, sc, u, t, k, out_idx, out_sc):
    if m.cu[u] == 0:  # no rating from this user yet: the popularity list
        c = user_pop_topk(u, us, it, sc, k, out_idx, out_sc)
        for r in range(k):
            out_sc[r] = 0.0
        return c
    n_cat = it.n[0]
    score_factors(m.P[u], m.Q, m.bi, n_cat, sc.scores)
    c = user_topk(sc.scores, n_cat, u, us, it, sc, k, out_idx, out_sc)
    add = _mu(m) + m.bu[u]
    for r in range(k):
        out_sc[r] += add
    return c


@njit(cache=True, inline="always")
def mf_explain(m, us, it, sc, u, k, idx, scores, why_item, why_val, why_src):
    explain_factors(m.Q, m.cu[u] != 0, us, u, k, idx, why_item, why_val, why_src)


register_steps(MFKType, prep=mf_prep, rank=mf_rank, predict=mf_predict, learn_pre=mf_learn, recommend=mf_recommend,
               explain=mf_explain)
