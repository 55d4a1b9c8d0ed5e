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
positive and ``n_neg`` candidates drawn uniformly from the non-chosen ones as negatives
(it models which candidate is chosen; a positive outside the candidates cannot be ranked
and would only teach it that the sources do not matter); then the three base models
learn from the event as they do alone.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .common import rng_below, sigmoid
from .core import LEARN, PEEK, RANK, WANT_LIST, observe
from .ftrl import HP_ALPHA, HP_BETA, HP_L1, HP_L2, ftrl_predict, ftrl_update, ftrl_weight
from .history import mark_history
from .popularity import pop_topk
from .implicit import implicit_learn
from .itemknn import itemknn_learn, itemknn_scores
from .topk import position_in, score_factors, topk_masked

N_FEAT = 7  # per activity bucket
N_BUCKETS = 5
HP_NCAND, HP_NNEG, HP_NCAND_MF, HP_NCAND_POP = range(4)
HP_SIZE = 4


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


@njit(cache=True)
def _features(j, s_mf, s_knn, knn_max, pop, pop_max, rank_mf, rank_knn, rank_pop, bucket, idx, val):
    base = bucket * N_FEAT
    for t in range(N_FEAT):
        idx[t] = base + t
    val[0] = 1.0
    val[1] = s_mf[j]
    val[2] = s_knn[j] / knn_max if knn_max > 0.0 else 0.0
    val[3] = pop[j] / pop_max if pop_max > 0.0 else 0.0
    val[4] = 1.0 / (1.0 + rank_mf[j]) if rank_mf[j] >= 0 else 0.0
    val[5] = 1.0 / (1.0 + rank_knn[j]) if rank_knn[j] >= 0 else 0.0
    val[6] = 1.0 / (1.0 + rank_pop[j]) if rank_pop[j] >= 0 else 0.0
    return N_FEAT


@njit(cache=True)
def _candidates(u, P, Q, b, C, cnt, inv, knn_hp, core, n_knn, n_mf, n_pop, s_mf, s_knn, rank_mf, rank_knn, rank_pop,
                cand, top_idx, top_sc):
    """Union of the three sources' top lists into ``cand``; returns (count, knn_max, pop_max)."""
    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl, porder, prank,
     udirty, idirty) = core
    n_cat = dims[1]
    score_factors(P[u], Q, b, n_cat, s_mf)
    itemknn_scores(u, C, cnt, inv, knn_hp, core, s_knn)
    mark_history(hoff, hlen, hpool, u, excl, 1)
    m = 0
    c = topk_masked(s_mf, n_cat, excl, active, n_mf, top_idx, top_sc)
    for r in range(c):
        j = top_idx[r]
        rank_mf[j] = r
        cand[m] = j
        m += 1
    c = topk_masked(s_knn, n_cat, excl, active, n_knn, top_idx, top_sc)
    knn_max = top_sc[0] if c > 0 else 0.0
    for r in range(c):
        j = top_idx[r]
        if rank_mf[j] < 0:
            cand[m] = j
            m += 1
        rank_knn[j] = r
    c = pop_topk(pop, porder, n_cat, excl, active, n_pop, top_idx, top_sc)
    pop_max = top_sc[0] if c > 0 else 0.0
    for r in range(c):
        j = top_idx[r]
        if rank_mf[j] < 0 and rank_knn[j] < 0:
            cand[m] = j
            m += 1
        rank_pop[j] = r
    mark_history(hoff, hlen, hpool, u, excl, 0)
    return m, knn_max, pop_max


@njit(cache=True)
def _rerank(m, cand, bucket, s_mf, s_knn, knn_max, pop, pop_max, rank_mf, rank_knn, rank_pop, z, nacc, fhp,
            k, idx, val, out_idx, out_sc, probs):
    """Top-k of the candidates by the re-ranker's probability (ties: lower row)."""
    # the bucket's weights are the same for every candidate: compute them once
    wb = np.empty(N_FEAT)
    alpha, beta, l1, l2 = fhp[HP_ALPHA], fhp[HP_BETA], fhp[HP_L1], fhp[HP_L2]
    for t in range(N_FEAT):
        wb[t] = ftrl_weight(z, nacc, bucket * N_FEAT + t, alpha, beta, l1, l2)
    cnt = 0
    for t in range(m):
        j = cand[t]
        _features(j, s_mf, s_knn, knn_max, pop, pop_max, rank_mf, rank_knn, rank_pop, bucket, idx, val)
        s = 0.0
        for f in range(N_FEAT):
            s += wb[f] * val[f]
        # monotone in the probability: rank by the logit
        probs[t] = s
    # selection by (score desc, row asc); candidates are not in row order, so compare rows on ties
    for t in range(m):
        j = cand[t]
        p = probs[t]
        if cnt == k and not (p > out_sc[k - 1] or (p == out_sc[k - 1] and j < out_idx[k - 1])):
            continue
        pos = cnt if cnt < k else k - 1
        while pos > 0 and (out_sc[pos - 1] < p or (out_sc[pos - 1] == p and out_idx[pos - 1] > j)):
            out_sc[pos] = out_sc[pos - 1]
            out_idx[pos] = out_idx[pos - 1]
            pos -= 1
        out_sc[pos] = p
        out_idx[pos] = j
        if cnt < k:
            cnt += 1
    for r in range(cnt):
        out_sc[r] = sigmoid(out_sc[r])
    for r in range(cnt, k):
        out_idx[r] = -1
        out_sc[r] = -np.inf
    return cnt


@njit(cache=True, nogil=True)
def hybrid_batch(U, I, T, F, k, P, Q, b, cu, ci, imp_hp, C, cnt, inv, knn_hp, z, nacc, fhp, hhp, core, out,
                 s_mf, s_knn, Q8, qs):
    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl, porder, prank,
     udirty, idirty) = core
    pred_out, pos_out, topk_out, lst_out, lst_sc_out = out
    n_knn = int(hhp[HP_NCAND])
    n_mf = int(hhp[HP_NCAND_MF])
    n_pop = int(hhp[HP_NCAND_POP])
    n_cand = max(n_knn, max(n_mf, n_pop))
    n_neg = int(hhp[HP_NNEG])
    cap = s_mf.shape[0]
    rank_mf = np.full(cap, -1, dtype=np.int32)
    rank_knn = np.full(cap, -1, dtype=np.int32)
    rank_pop = np.full(cap, -1, dtype=np.int32)
    cand = np.empty(3 * n_cand, dtype=np.int64)
    probs = np.empty(3 * n_cand, dtype=np.float64)
    top_idx = np.empty(n_cand, dtype=np.int32)
    top_sc = np.empty(n_cand, dtype=np.float64)
    sc_k = np.empty(k, dtype=np.float64)
    idx = np.empty(N_FEAT, dtype=np.int64)
    val = np.empty(N_FEAT, dtype=np.float64)
    w = np.empty(N_FEAT, dtype=np.float64)
    tmp = np.empty(P.shape[1], dtype=np.float64)
    zdirty = np.zeros((z.shape[0] >> 12) + 1, dtype=np.uint8)  # the re-ranker is written whole
    for e in range(U.shape[0]):
        u = U[e]
        i = I[e]
        f = F[e]
        bucket = _bucket(uev[u])
        if f & (RANK | LEARN):
            m, knn_max, pop_max = _candidates(u, P, Q, b, C, cnt, inv, knn_hp, core, n_knn, n_mf, n_pop, s_mf, s_knn,
                                              rank_mf, rank_knn, rank_pop, cand, top_idx, top_sc)
            if f & RANK:
                c = _rerank(m, cand, bucket, s_mf, s_knn, knn_max, pop, pop_max, rank_mf, rank_knn, rank_pop,
                            z, nacc, fhp, k, idx, val, topk_out[e], sc_k, probs)
                pos_out[e] = position_in(topk_out[e], c, i) if i < dims[1] else -1
            in_cand = i < dims[1] and (rank_mf[i] >= 0 or rank_knn[i] >= 0 or rank_pop[i] >= 0)
            if (f & LEARN) and in_cand:
                # positive: the observed item, described as the sources saw it
                nf = _features(i, s_mf, s_knn, knn_max, pop, pop_max, rank_mf, rank_knn, rank_pop, bucket, idx, val)
                p = ftrl_predict(idx, val, nf, z, nacc, fhp, w)
                ftrl_update(idx, val, nf, w, p, 1.0, z, nacc, fhp, zdirty)
                if m > 1:
                    for _ in range(n_neg):
                        j = cand[rng_below(rng, m)]
                        if j == i:
                            continue
                        nf = _features(j, s_mf, s_knn, knn_max, pop, pop_max, rank_mf, rank_knn, rank_pop, bucket,
                                       idx, val)
                        p = ftrl_predict(idx, val, nf, z, nacc, fhp, w)
                        ftrl_update(idx, val, nf, w, p, 0.0, z, nacc, fhp, zdirty)
            for t in range(m):
                j = cand[t]
                rank_mf[j] = -1
                rank_knn[j] = -1
                rank_pop[j] = -1
        if f & LEARN:
            itemknn_learn(u, i, C, cnt, inv, knn_hp, core)
        if not (f & PEEK):
            observe(core, u, i, T[e], 1.0)
        if f & LEARN:
            if not implicit_learn(u, i, P, Q, b, cu, ci, imp_hp, core, Q8, qs, False, tmp):
                return e
            for t in range(z.shape[0]):
                if not math.isfinite(z[t]):
                    return e
        if f & WANT_LIST:
            m, knn_max, pop_max = _candidates(u, P, Q, b, C, cnt, inv, knn_hp, core, n_knn, n_mf, n_pop, s_mf, s_knn,
                                              rank_mf, rank_knn, rank_pop, cand, top_idx, top_sc)
            _rerank(m, cand, bucket, s_mf, s_knn, knn_max, pop, pop_max, rank_mf, rank_knn, rank_pop,
                    z, nacc, fhp, k, idx, val, lst_out[e], sc_k, probs)
            for r in range(k):
                lst_sc_out[e, r] = sc_k[r]
            for t in range(m):
                j = cand[t]
                rank_mf[j] = -1
                rank_knn[j] = -1
                rank_pop[j] = -1
    return -1
