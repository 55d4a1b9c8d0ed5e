"""Hybrid: candidates from three models, re-ranked by an FTRL model of their scores.

For user u, candidates are the union of

- the top ``n_mf`` of the implicit factor model (``implicit``),
- the top ``n_knn`` of item-to-item CF (``itemknn``),
- the top ``n_pop`` by decayed popularity (read off the maintained popularity order),

each excluding what u already had. A candidate j is described by a small dense vector
(bias; factor score; item-to-item score / the user's best; popularity / the best;
``1/(1 + rank)`` in each source's list, 0 when absent), replicated per user-activity
bucket (no history, 1-4, 5-19, 20-99, 100+ events) so the blend can differ between new and
established users. An FTRL-Proximal logistic model (``ftrl``) scores the candidates; the
top k by probability is the list.

Learning from event (u, i): when i is among the candidates, the re-ranker sees it as a
positive and, as negatives, ``rerank_negatives`` draws uniformly from the candidates
with replacement, a draw of the chosen item skipped (so about ``rerank_negatives * (1 -
1/n)`` negatives, a candidate possibly twice). It models which candidate is chosen: a
positive outside the candidates cannot be ranked and would only teach it that the
sources do not matter. Then the three base models learn from the event as they do alone.

Steps (``driver``): ``prep`` gathers the candidates once per event (for ``rank`` and the
re-ranker's learning); ``learn_pre`` (before ``observe``) trains the re-ranker and counts
co-occurrences; ``learn_post`` (after it) trains the factor part, as ``implicit`` does;
``recommend`` gathers and re-ranks again with the state after the event, the activity
bucket included.
"""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np
from numba import njit

from .annk import ann_ready, factor_topk
from .common import rng_below_at, sigmoid
from .driver import register_steps
from .explain import (SRC_FACTORS, SRC_KNN, SRC_POPULAR, WHY_SIMILAR, factor_because, knn_recent,
                      knn_top_contributor, no_reason)
from .ftrl import ftrl_predict, ftrl_update, ftrl_weight
from .core import user_pop_topk, user_topk
from .implicit import implicit_learn
from .ivf import exact_score
from .itemknn import (candidate_score, dense_scores, is_dense, itemknn_gather, itemknn_learn, itemknn_release,
                      itemknn_select, pop_top)
from .layout import DIVERGED, LEARN, NEED_ROOM, OK, RANK, bind_constructor, define
from .neighbors import room_for
from .popularity import pop_relative
from .topk import topk_candidates

N_FEAT = 7  # per activity bucket
N_BUCKETS = 5
HybridHP = namedtuple("HybridHP", ["candidates", "factor_candidates", "pop_candidates", "rerank_negatives"])
# rr_z/rr_n: the re-ranker's FTRL accumulators; rr_hp its hyper-parameters (an FTRLHP).
# Scratch: rank_* each candidate's rank in its source (-1: not proposed by it; all -1
# between events); cand/probs the union and its logits; tmp [candidate count, best
# item-to-item score, the row of the most popular candidate, activity bucket, the row of
# the most popular item, item-to-item candidates gathered] (prep).
HybridK, HybridKType = define("HybridK", ["imp", "knn", "rr_z", "rr_n", "rr_hp", "hp", "rank_mf", "rank_knn",
                                          "rank_pop", "cand", "probs", "top_idx", "top_sc", "idx", "val", "w",
                                          "zdirty", "tmp"], __name__)


@njit(cache=True)
def _new_hybridk(imp, knn, rr_z, rr_n, rr_hp, hp, rank_mf, rank_knn, rank_pop, cand, probs, top_idx, top_sc, idx, val,
                 w, zdirty, tmp):
    return HybridK(imp, knn, rr_z, rr_n, rr_hp, hp, rank_mf, rank_knn, rank_pop, cand, probs, top_idx, top_sc, idx, val,
                   w, zdirty, tmp)


bind_constructor(HybridK, _new_hybridk)

@njit(cache=True, inline="always")
def _bucket(n):
    if n == 0:
        return 0
    if n < 5:
        return 1
    if n < 20:
        return 2
    if n < 100:
        return 3
    return 4


@njit(cache=True, inline="always")
def _features(m, it, j, s_mf, knn_max, pop_max, bucket):
    idx, val = m.idx, m.val
    base = bucket * N_FEAT
    for t in range(N_FEAT):
        idx[t] = base + t
    val[0] = 1.0
    val[1] = s_mf[j]
    s_knn = m.knn.dsc[j] if is_dense(m.knn) else candidate_score(m.knn, it, j, int(m.tmp[4]))
    val[2] = s_knn / knn_max if knn_max > 0.0 else 0.0
    val[3] = pop_relative(it.plin, j, int(pop_max))  # pop_max: the row of the user's most popular candidate
    val[4] = 1.0 / (1.0 + m.rank_mf[j]) if m.rank_mf[j] >= 0 else 0.0
    val[5] = 1.0 / (1.0 + m.rank_knn[j]) if m.rank_knn[j] >= 0 else 0.0
    val[6] = 1.0 / (1.0 + m.rank_pop[j]) if m.rank_pop[j] >= 0 else 0.0
    return N_FEAT


@njit(cache=True, inline="always")
def _candidates(m, us, it, sc, u):
    """Union of the three sources' top lists into ``m.cand``; sets ``m.tmp[0:3]`` and
    ``m.tmp[4:6]`` (the item-to-item part stays gathered until ``_release``)."""
    hp = m.hp
    n_cat = it.n[0]
    imp, knn = m.imp, m.knn
    s_mf = sc.scores
    top_idx, top_sc, cand = m.top_idx, m.top_sc, m.cand
    rank_mf, rank_knn, rank_pop = m.rank_mf, m.rank_knn, m.rank_pop
    # from the index (large catalogs) or the exact scan, which leaves every score in s_mf
    c = factor_topk(imp.ann, imp.P[u], imp.Q, imp.b, us, it, sc, u, hp.factor_candidates, top_idx, top_sc)
    n = 0
    for r in range(c):
        j = top_idx[r]
        rank_mf[j] = r
        cand[n] = j
        n += 1
    if is_dense(knn):
        dense_scores(knn, us, it, u, knn.dsc)
        m.tmp[5] = 0
        c = user_topk(knn.dsc, n_cat, u, us, it, sc, hp.candidates, top_idx, top_sc)
    else:
        gathered = itemknn_gather(knn, us, u)
        top = pop_top(it)
        m.tmp[4] = top
        m.tmp[5] = gathered
        c = itemknn_select(knn, us, it, sc, u, gathered, top, hp.candidates, top_idx, top_sc)
    knn_max = top_sc[0] if c > 0 else 0.0
    for r in range(c):
        j = top_idx[r]
        if rank_mf[j] < 0:
            cand[n] = j
            n += 1
        rank_knn[j] = r
    c = user_pop_topk(u, us, it, sc, hp.pop_candidates, top_idx, top_sc)
    pop_max = top_idx[0] if c > 0 else 0
    for r in range(c):
        j = top_idx[r]
        if rank_mf[j] < 0 and rank_knn[j] < 0:
            cand[n] = j
            n += 1
        rank_pop[j] = r
    if imp.ann.on:  # the features read the factor score of every candidate
        p = imp.P[u]
        for t in range(n):
            j = cand[t]
            s_mf[j] = exact_score(p, imp.Q, imp.b, j)  # as the index returns it
    m.tmp[0] = n
    m.tmp[1] = knn_max
    m.tmp[2] = pop_max


@njit(cache=True, inline="always")
def _release(m):
    """Clear the candidates' source ranks and the gathered item-to-item scores."""
    for t in range(int(m.tmp[0])):
        j = m.cand[t]
        m.rank_mf[j] = -1
        m.rank_knn[j] = -1
        m.rank_pop[j] = -1
    m.tmp[0] = 0
    itemknn_release(m.knn, int(m.tmp[5]))
    m.tmp[5] = 0


@njit(cache=True, inline="always")
def _rerank(m, it, sc, k, out_idx, out_sc):
    """Top-k of the candidates by the re-ranker's probability (``topk_candidates``)."""
    n = int(m.tmp[0])
    knn_max, pop_max, bucket = m.tmp[1], m.tmp[2], int(m.tmp[3])
    fhp = m.rr_hp
    # the bucket's weights are the same for every candidate: compute them once
    wb = m.w
    for t in range(N_FEAT):
        wb[t] = ftrl_weight(m.rr_z, m.rr_n, bucket * N_FEAT + t, fhp.alpha, fhp.beta, fhp.l1, fhp.l2)
    for t in range(n):
        _features(m, it, m.cand[t], sc.scores, knn_max, pop_max, bucket)
        s = 0.0
        for f in range(N_FEAT):
            s += wb[f] * m.val[f]
        m.probs[t] = s  # the logit: monotone in the probability
    c = topk_candidates(m.cand, m.probs, n, k, out_idx, out_sc)
    for r in range(c):
        out_sc[r] = sigmoid(out_sc[r])
    return c


@njit(cache=True, inline="always")
def hybrid_prep(m, us, it, sc, b, e):
    m.tmp[3] = _bucket(us.uev[b.U[e]])
    if b.F[e] & (RANK | LEARN):  # the candidates before learning
        _candidates(m, us, it, sc, b.U[e])


@njit(cache=True, inline="always")
def hybrid_rank(m, us, it, sc, b, e, k, out_idx, out_sc):
    c = _rerank(m, it, sc, k, out_idx, out_sc)
    if not (b.F[e] & LEARN):  # not learning: nothing else needs the candidates
        _release(m)
    return c


@njit(cache=True, inline="always")
def hybrid_learn_pre(m, us, it, sc, b, e):
    u = b.U[e]
    i = b.I[e]
    if not is_dense(m.knn) and not room_for(m.knn.used, m.knn.pj.shape[0], m.knn.hp.neighbors, m.knn.hp.window + 2):
        _release(m)
        return NEED_ROOM
    if not ann_ready(m.imp.ann, it.n[0]):
        _release(m)
        return NEED_ROOM
    n = int(m.tmp[0])
    knn_max, pop_max, bucket = m.tmp[1], m.tmp[2], int(m.tmp[3])
    in_cand = i < it.n[0] and (m.rank_mf[i] >= 0 or m.rank_knn[i] >= 0 or m.rank_pop[i] >= 0)
    if in_cand:
        # positive: the observed item, described as the sources saw it
        fhp = m.rr_hp
        nf = _features(m, it, i, sc.scores, knn_max, pop_max, bucket)
        p = ftrl_predict(m.idx, m.val, nf, m.rr_z, m.rr_n, fhp, m.w)
        ftrl_update(m.idx, m.val, nf, m.w, p, 1.0, m.rr_z, m.rr_n, fhp, m.zdirty)
        if n > 1:
            for _ in range(m.hp.rerank_negatives):
                j = m.cand[rng_below_at(us.rng, u, n)]
                if j == i:
                    continue
                nf = _features(m, it, j, sc.scores, knn_max, pop_max, bucket)
                p = ftrl_predict(m.idx, m.val, nf, m.rr_z, m.rr_n, fhp, m.w)
                ftrl_update(m.idx, m.val, nf, m.w, p, 0.0, m.rr_z, m.rr_n, fhp, m.zdirty)
    _release(m)
    itemknn_learn(m.knn, us, it, u, i)  # room was checked above
    return OK


@njit(cache=True, inline="always")
def hybrid_learn_post(m, us, it, sc, b, e):
    if not implicit_learn(m.imp, us, it, b.U[e], b.I[e]):
        return DIVERGED
    for t in range(m.rr_z.shape[0]):
        if not math.isfinite(m.rr_z[t]):
            return DIVERGED
    return OK


@njit(cache=True, inline="always")
def hybrid_recommend(m, us, it, sc, u, t, k, out_idx, out_sc):
    m.tmp[3] = _bucket(us.uev[u])  # the user's activity as of now, this event included
    _candidates(m, us, it, sc, u)
    c = _rerank(m, it, sc, k, out_idx, out_sc)
    _release(m)
    return c


@njit(cache=True, inline="always")
def hybrid_explain(m, us, it, sc, u, k, idx, scores, why_item, why_val, why_src):
    """Which sources proposed each listed item, and the reason of the first of
    item-to-item (its top recent item and share of the item-to-item score) and factors
    (the most similar recent item) that did (``explain``). The candidates are gathered
    again from the state ``recommend`` saw: the same ones."""
    m.tmp[3] = _bucket(us.uev[u])
    _candidates(m, us, it, sc, u)
    back = us.recent.shape[1]
    rows = np.empty(m.knn.hp.recent, np.int64)
    wts = np.empty(m.knn.hp.recent, np.float64)
    L = knn_recent(m.knn, us, u, rows, wts)
    for r in range(k):
        j = idx[r]
        no_reason(r, why_item, why_val, why_src)
        if j < 0:
            continue
        src = 0
        if m.rank_knn[j] >= 0:
            src |= SRC_KNN
        if m.rank_mf[j] >= 0:
            src |= SRC_FACTORS
        if m.rank_pop[j] >= 0:
            src |= SRC_POPULAR
        why_src[r] = src
        h, v = -1, 0.0
        if src & SRC_KNN:
            s_knn = m.knn.dsc[j] if is_dense(m.knn) else candidate_score(m.knn, it, j, int(m.tmp[4]))
            h, v = knn_top_contributor(m.knn, rows, wts, L, j, s_knn)
        if h < 0 and src & SRC_FACTORS:  # no recent item points to it: the factors' reason
            h, v = factor_because(m.imp.Q, us, u, j, back)
            why_src[r] = src | WHY_SIMILAR
        if h >= 0:
            why_item[r] = h
            why_val[r] = v
    _release(m)


register_steps(HybridKType, prep=hybrid_prep, rank=hybrid_rank, learn_pre=hybrid_learn_pre, learn_post=hybrid_learn_post,
               recommend=hybrid_recommend, explain=hybrid_explain)
