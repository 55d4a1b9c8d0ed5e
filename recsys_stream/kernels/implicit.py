"""Implicit (positive-only) matrix factorisation trained per event.

Score: ``s(u, j) = p_u . q_j + b_j``.

Per positive event (u, i), two optional parts:

- ISGD (Vinagre, Jorge & Gama 2014, "Fast incremental matrix factorization for
  recommendation with positive-only feedback"): the target of a positive is 1, so with
  ``e = 1 - p_u . q_i``::

      p_u += eta * (e * q_i - lambda * p_u)
      q_i += eta * (e * p_u - lambda * q_i)

- BPR-style sampled negatives (Rendle et al. 2009): ``n_neg`` items ``j``, skipping ``i``
  and the user's own items, each drawn uniformly from the catalog or, with probability
  ``head_negatives`` when the catalog is larger than the popularity head (``HEAD``
  items, ``popularity``), uniformly from that head; for each, with
  ``x = s(u, i) - s(u, j)`` and ``g = sigmoid(-x)``::

      p_u += eta * (g * (q_i - q_j) - lambda * p_u)
      q_i += eta_i * (g * p_u - lambda * q_i);   b_i += eta * (g - lambda_b * b_i)
      q_j += eta_j * (-g * p_u - lambda * q_j);  b_j += eta * (-g - lambda_b * b_j)

  where an item row's step decays with the updates it has had (``ci``, negatives
  included): ``eta_i = eta * sqrt(C / (C + ci[i]))``, ``C = item_decay`` (0: ``eta``), the
  per-coordinate ``1/sqrt(n)`` schedule of online learning (as in FTRL, McMahan et al.
  2013). A popular item's vector then averages over its many users instead of following
  the last few, and a new item still learns at the full rate.

A factor model needs many negatives per event before it beats popularity; one per event
stays near it. On a large catalog with a long tail, uniform negatives are nearly all
tail items the user was never going to pick, so they teach little about ordering the
items people do pick (Rendle & Freudenthaler 2014, "Improving pairwise learning for item
recommendation from implicit feedback", sample by popularity for that reason): drawing
a share from the popularity head makes the head compete with itself. On a catalog of at
most ``HEAD`` items the head is the whole catalog and every draw is uniform, as before.
Rows are drawn from N(0, init_std^2): a user's at its first update, an item's when it
is created, from its id (``init``).

Ranking reads the model's retrieval index when it is on (``annk.factor_topk``: large
catalogs), else scans every item; the positive's item row is re-copied into the index at
once, a negative's every ``lag``-th update of the row (``annk``: a copy at most ``lag - 1``
updates behind its row).

Steps (``driver``): ``rank``; ``learn_pre``, which only checks that the index can take
the event's changes (``annk.ann_ready``); ``learn_post``, after ``observe``, so the event's item is
among the user's items that negatives skip, and a new item is already in the catalog
negatives are drawn from; ``recommend``.
"""

from __future__ import annotations

import math
from collections import namedtuple

from numba import njit

from .annk import ann_ready, ann_refresh, ann_refresh_lagged, factor_topk
from .common import rng_below_at, rng_uniform_at, sigmoid
from .core import user_pop_topk, user_topk
from .driver import register_steps
from .explain import explain_factors
from .layout import DIVERGED, NEED_ROOM, OK, bind_constructor, define
from .init import init_user_row
from .pairset import pairset_contains
from .popularity import HEAD
from .topk import quantize_row, score_factors_q8

ImplicitHP = namedtuple("ImplicitHP", ["lr", "reg", "bias_reg", "init_std", "isgd", "negatives", "neg_tries",
                                       "head_negatives", "item_decay", "quantized"])
ImplicitK, ImplicitKType = define("ImplicitK", ['P', 'cu', 'Q', 'b', 'ci', 'Q8', 'qs', 'hp', 'tmp', 'ann'], __name__)


@njit(cache=True)
def _new_implicitk(P, cu, Q, b, ci, Q8, qs, hp, tmp, ann):
    return ImplicitK(P, cu, Q, b, ci, Q8, qs, hp, tmp, ann)


bind_constructor(ImplicitK, _new_implicitk)


@njit(cache=True, inline="always")
def implicit_learn(m, us, it, u, i):
    """One positive event's update (ISGD part and sampled BPR pairs); True if finite."""
    hp = m.hp
    P, Q, b, ci = m.P, m.Q, m.b, m.ci
    tmp = m.tmp
    dim = P.shape[1]
    lr = hp.lr
    reg = hp.reg
    breg = hp.bias_reg
    decay = hp.item_decay
    init = hp.init_std
    use_q8 = hp.quantized
    if m.cu[u] == 0:
        init_user_row(P, u, init, us)
    if hp.isgd:
        s = 0.0
        for d in range(dim):
            s += P[u, d] * Q[i, d]
        err = 1.0 - s
        for d in range(dim):
            pu = P[u, d]
            P[u, d] += lr * (err * Q[i, d] - reg * pu)
            Q[i, d] += lr * (err * pu - reg * Q[i, d])
    n_cat = it.n[0]
    active = it.active
    rng = us.rng
    lri = lr * math.sqrt(decay / (decay + ci[i])) if decay > 0.0 else lr  # ci[i] moves after the pairs
    for _ in range(hp.negatives):
        j = -1
        for _t in range(hp.neg_tries):
            if n_cat > HEAD and hp.head_negatives > 0.0 and rng_uniform_at(rng, u) < hp.head_negatives:
                c = it.porder[rng_below_at(rng, u, HEAD)]  # the head's places hold its items
            else:
                c = rng_below_at(rng, u, n_cat) if n_cat > 0 else -1
            if c < 0:
                break
            if c != i and active[c] != 0 and not pairset_contains(us.seen, u, c):
                j = c
                break
        if j < 0:
            continue
        ci[j] += 1  # ci counts every update of the row, negatives included
        it.dirty[j] = 1
        x = b[i] - b[j]
        for d in range(dim):
            x += P[u, d] * (Q[i, d] - Q[j, d])
        g = sigmoid(-x)
        lrj = lr * math.sqrt(decay / (decay + ci[j])) if decay > 0.0 else lr
        for d in range(dim):
            pu = P[u, d]
            tmp[d] = Q[i, d] - Q[j, d]
            P[u, d] += lr * (g * tmp[d] - reg * pu)
            Q[i, d] += lri * (g * pu - reg * Q[i, d])
            Q[j, d] += lrj * (-g * pu - reg * Q[j, d])
        b[i] += lr * (g - breg * b[i])
        b[j] += lr * (-g - breg * b[j])
        ann_refresh_lagged(m.ann, Q, b, j, ci[j])
        if use_q8:
            quantize_row(Q, j, m.Q8, m.qs)
        if not math.isfinite(b[j]):
            return False
    if use_q8:
        quantize_row(Q, i, m.Q8, m.qs)
    ann_refresh(m.ann, Q, b, i)
    m.cu[u] += 1
    ci[i] += 1
    if not math.isfinite(b[i]):
        return False
    for d in range(dim):
        if not (math.isfinite(P[u, d]) and math.isfinite(Q[i, d])):
            return False
    return True


@njit(cache=True, inline="always")
def implicit_rank(m, us, it, sc, b, e, k, out_idx, out_sc):
    u = b.U[e]
    if m.hp.quantized and not m.ann.on:
        n_cat = it.n[0]
        score_factors_q8(m.P[u], m.Q8, m.qs, m.b, n_cat, sc.scores)
        return user_topk(sc.scores, n_cat, u, us, it, sc, k, out_idx, out_sc)
    return factor_topk(m.ann, m.P[u], m.Q, m.b, us, it, sc, u, k, out_idx, out_sc)


@njit(cache=True, inline="always")
def implicit_learn_pre(m, us, it, sc, b, e):
    """Before the event changes anything: the retrieval index can take its changes."""
    return OK if ann_ready(m.ann, it.n[0]) else NEED_ROOM


@njit(cache=True, inline="always")
def implicit_learn_post(m, us, it, sc, b, e):
    return OK if implicit_learn(m, us, it, b.U[e], b.I[e]) else DIVERGED


@njit(cache=True, inline="always")
def implicit_recommend(m, us, it, sc, u, t, k, out_idx, out_sc):
    if m.cu[u] == 0:  # not learned yet (e.g. a frequency filter): the popularity list
        return user_pop_topk(u, us, it, sc, k, out_idx, out_sc)
    return factor_topk(m.ann, m.P[u], m.Q, m.b, us, it, sc, u, k, out_idx, out_sc)


@njit(cache=True, inline="always")
def implicit_explain(m, us, it, sc, u, k, idx, scores, why_item, why_val, why_src):
    explain_factors(m.Q, m.cu[u] != 0, us, u, k, idx, why_item, why_val, why_src)


register_steps(ImplicitKType, rank=implicit_rank, learn_pre=implicit_learn_pre, learn_post=implicit_learn_post, recommend=implicit_recommend,
               explain=implicit_explain)
