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
  the item's (id, genres, ...); the event's context; with ``crosses``, every user
  feature x item feature cross except id x id. With ``normalize`` their value is
  ``1/sqrt(count)`` (a unit-norm row, so the step does not grow with the row's size).
- with ``stats``, four real-valued online statistics of the stream so far (counting
  features, as CTR models keep), each shrunk towards the global value by
  ``stats_prior`` pseudo-events: the logit of the user's and of the item's like rate;
  the item's mean value (rating) minus the global mean; and the user's mean deviation
  from the mean value of the items they chose (a baseline user bias).

The statistics are the user's likes/events/deviation sum, the item's likes/events/value
sum and ``glob = [likes, events, value sum]``.

Steps (``driver``): ``prep`` builds the event's row and predicts once; ``predict``,
``learn_pre`` (before ``observe``), ``rank`` and ``recommend`` (p(like) of every item for
the user and the event's context).
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from .common import hash_combine, sigmoid
from .core import user_topk
from .driver import register_steps
from .layout import DIVERGED, OK, bind_constructor, define

FTRLHP = namedtuple("FTRLHP", ["alpha", "beta", "l1", "l2", "crosses", "normalize", "stats", "stats_prior"])
N_STATS = 4
# tmp: [number of features of the current event's row, its probability] (set by prep);
# idx/val/w: that row (see ``like_features``) and its lazy weights
FTRLK, FTRLKType = define("FTRLK", ['feat_u', 'nfeat_u', 'ulikes', 'uevents', 'udev', 'feat_i', 'nfeat_i', 'ilikes', 'ievents', 'ivalues', 'z', 'n', 'zdirty', 'glob', 'hp', 'idx', 'val', 'w', 'tmp', 'noctx'], __name__)


@njit(cache=True)
def _new_ftrlk(feat_u, nfeat_u, ulikes, uevents, udev, feat_i, nfeat_i, ilikes, ievents, ivalues, z, n, zdirty, glob, hp, idx, val, w, tmp, noctx):
    return FTRLK(feat_u, nfeat_u, ulikes, uevents, udev, feat_i, nfeat_i, ilikes, ievents, ivalues, z, n, zdirty, glob, hp, idx, val, w, tmp, noctx)


bind_constructor(FTRLK, _new_ftrlk)
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
    alpha = hp.alpha
    beta = hp.beta
    l1 = hp.l1
    l2 = hp.l2
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
    alpha = hp.alpha
    for t in range(nnz):
        c = idx[t]
        g = (p - y) * val[t]
        sigma = (math.sqrt(n[c] + g * g) - math.sqrt(n[c])) / alpha
        z[c] += g - sigma * w[t]
        n[c] += g * g
        dirty[c >> CHUNK_BITS] = 1


@njit(cache=True, inline="always")
def like_features(m, u, j, ctx_hash, c0, c1, mask, idx, val):
    """Feature row of (user row u, item row j) plus the context hashes ``ctx_hash[c0:c1]``
    (see the module docstring); returns the number of entries written to ``idx``/``val``."""
    hp = m.hp
    ufeat, ifeat = m.feat_u, m.feat_i
    mm = 0
    idx[mm] = np.int64(_BIAS_HASH & mask)
    mm += 1
    nu = m.nfeat_u[u]
    ni = m.nfeat_i[j]
    for a in range(nu):
        idx[mm] = np.int64(ufeat[u, a] & mask)
        mm += 1
    for bb in range(ni):
        idx[mm] = np.int64(ifeat[j, bb] & mask)
        mm += 1
    for c in range(c0, c1):
        idx[mm] = np.int64(ctx_hash[c] & mask)
        mm += 1
    if hp.crosses:
        for a in range(nu):
            for bb in range(ni):
                if a == 0 and bb == 0:
                    continue  # user id x item id: too sparse to generalise
                idx[mm] = np.int64(hash_combine(ufeat[u, a], ifeat[j, bb]) & mask)
                mm += 1
    v = 1.0 / math.sqrt(mm) if hp.normalize else 1.0
    for t in range(mm):
        val[t] = v
    if hp.stats:
        glob = m.glob
        prior = hp.stats_prior
        p0 = (glob[0] + 1.0) / (glob[1] + 2.0)
        v0 = glob[2] / glob[1] if glob[1] > 0.0 else 0.0
        un = m.uevents[u]
        inn = m.ievents[j]
        idx[mm] = np.int64(_USER_RATE_HASH & mask)
        val[mm] = _logit_rate(m.ulikes[u], un, p0, prior)
        idx[mm + 1] = np.int64(_ITEM_RATE_HASH & mask)
        val[mm + 1] = _logit_rate(m.ilikes[j], inn, p0, prior)
        idx[mm + 2] = np.int64(_USER_VALUE_HASH & mask)
        val[mm + 2] = m.udev[u] / (un + prior)
        idx[mm + 3] = np.int64(_ITEM_VALUE_HASH & mask)
        val[mm + 3] = (m.ivalues[j] + prior * v0) / (inn + prior) - v0
        mm += N_STATS
    return mm


def row_capacity(max_user_features: int, max_item_features: int, max_context: int) -> int:
    """The longest row ``like_features`` can write."""
    return 1 + max_user_features + max_item_features + max_user_features * max_item_features + max_context + N_STATS


@njit(cache=True, inline="always")
def learn_stats(m, u, i, y, value):
    """Count event (u, i) with like label y and value into the online statistics."""
    glob = m.glob
    prior = m.hp.stats_prior
    v0 = glob[2] / glob[1] if glob[1] > 0.0 else value
    m.udev[u] += value - (m.ivalues[i] + prior * v0) / (m.ievents[i] + prior)
    m.ivalues[i] += value
    m.ulikes[u] += y
    m.uevents[u] += 1.0
    m.ilikes[i] += y
    m.ievents[i] += 1.0
    glob[0] += y
    glob[1] += 1.0
    glob[2] += value


@njit(cache=True, inline="always")
def _like_scores(m, u, ctx_hash, c0, c1, n_cat, scores):
    mask = np.uint64(m.z.shape[0] - 1)
    for j in range(n_cat):
        mm = like_features(m, u, j, ctx_hash, c0, c1, mask, m.idx, m.val)
        scores[j] = ftrl_predict(m.idx, m.val, mm, m.z, m.n, m.hp, m.w)


@njit(cache=True, inline="always")
def ftrl_prep(m, us, it, sc, b, e):
    mask = np.uint64(m.z.shape[0] - 1)
    mm = like_features(m, b.U[e], b.I[e], b.ctx_hash, b.ctx_ptr[e], b.ctx_ptr[e + 1], mask, m.idx, m.val)
    m.tmp[0] = mm
    m.tmp[1] = ftrl_predict(m.idx, m.val, mm, m.z, m.n, m.hp, m.w)


@njit(cache=True, inline="always")
def ftrl_predict_step(m, us, it, sc, b, e):
    return m.tmp[1]


@njit(cache=True, inline="always")
def ftrl_learn(m, us, it, sc, b, e):
    # the row and weights of prep are still current: ranking in between wrote only scratch
    mm = int(m.tmp[0])
    u = b.U[e]
    i = b.I[e]
    y = b.Y[e]
    ftrl_update(m.idx, m.val, mm, m.w, m.tmp[1], y, m.z, m.n, m.hp, m.zdirty)
    learn_stats(m, u, i, y, b.V[e])
    for t in range(mm):
        c = m.idx[t]
        if not (math.isfinite(m.z[c]) and math.isfinite(m.n[c])):
            return DIVERGED
    return OK


@njit(cache=True, inline="always")
def ftrl_rank(m, us, it, sc, b, e, k, out_idx, out_sc):
    u = b.U[e]
    n_cat = it.n[0]
    _like_scores(m, u, b.ctx_hash, b.ctx_ptr[e], b.ctx_ptr[e + 1], n_cat, sc.scores)
    # scoring overwrote the event's row: build it again for predict and learn
    ftrl_prep(m, us, it, sc, b, e)
    return user_topk(sc.scores, n_cat, u, us, it, sc, k, out_idx, out_sc)


@njit(cache=True, inline="always")
def ftrl_recommend(m, us, it, sc, u, t, k, out_idx, out_sc):
    # a list is for the user, not for the context of the event that triggered it: the
    # same list ``recommend`` gives at the same version
    n_cat = it.n[0]
    _like_scores(m, u, m.noctx, 0, 0, n_cat, sc.scores)
    return user_topk(sc.scores, n_cat, u, us, it, sc, k, out_idx, out_sc)


register_steps(FTRLKType, prep=ftrl_prep, rank=ftrl_rank, predict=ftrl_predict_step, learn_pre=ftrl_learn,
               recommend=ftrl_recommend)
