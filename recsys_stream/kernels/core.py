"""What every model shares per event: recording an interaction, the recency ring, and the
user's top-k over a score vector or over popularity (see ``layout`` for the structures).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .history import history_append, mark_history
from .pairset import pairset_add
from .popularity import HEAD, pop_learn, pop_relative, pop_topk, pop_weight
from .topk import _worse, topk_masked


@njit(cache=True, inline="always")
def extend_catalog(it, i):
    """Make item row ``i`` part of the catalog (rows arrive in order: a new item takes the
    last places of the popularity order)."""
    n = it.n[0]
    if i >= n:
        for r in range(n, i + 1):
            it.porder[r] = r
            it.prank[r] = r
        it.n[0] = i + 1


@njit(cache=True, inline="always")
def observe(us, it, u, i, t):
    """Record interaction (u, i) at time t: seen set, history, counts, popularity, recency."""
    extend_catalog(it, i)
    if pairset_add(us.seen, us.seen_count, u, i):
        history_append(us.hoff, us.hlen, us.hpool, u, i)
    pop_learn(it.pop, it.plin, it.pop_meta, it.n[0], i, t, it.porder, it.prank)
    c = it.plog_n[0]
    if c < it.plog_i.shape[0]:  # the item side is shared: its owner replays this increment
        it.plog_i[c] = i
        it.plog_x[c] = pop_weight(it.pop_meta, t)
        it.plog_n[0] = c + 1
    us.dirty[u] = 1
    it.dirty[i] = 1
    R = us.recent.shape[1]
    us.recent[u, us.uev[u] % R] = i
    us.uev[u] += 1
    it.iev[i] += 1


@njit(cache=True, inline="always")
def recent_item(us, u, back):
    """The user's item ``back`` steps ago (0 = most recent), or -1."""
    n = us.uev[u]
    R = us.recent.shape[1]
    if back >= n or back >= R:
        return -1
    return us.recent[u, (n - 1 - back) % R]


@njit(cache=True, inline="always")
def user_topk(scores, n_cat, u, us, it, sc, k, out_idx, out_sc):
    """Top-k of ``scores[:n_cat]`` for user row u, excluding the user's items and retired
    ones (u < 0: an unknown user, nothing of theirs to exclude); returns the count."""
    mark_history(us.hoff, us.hlen, us.hpool, u, sc.excl, 1)
    c = topk_masked(scores, n_cat, sc.excl, it.active, k, out_idx, out_sc)
    mark_history(us.hoff, us.hlen, us.hpool, u, sc.excl, 0)
    return c


@njit(cache=True, inline="always")
def user_pop_topk(u, us, it, sc, k, out_idx, out_sc):
    """The popularity list of user row u (their items excluded; u < 0: nothing excluded):
    the list of a user the model does not know yet."""
    mark_history(us.hoff, us.hlen, us.hpool, u, sc.excl, 1)
    c = pop_topk(it.pop, it.plin, it.porder, it.n[0], sc.excl, it.active, k, out_idx, out_sc)
    mark_history(us.hoff, us.hlen, us.hpool, u, sc.excl, 0)
    return c


@njit(cache=True)
def pad(out_idx, out_sc, c, k):
    for r in range(c, k):
        out_idx[r] = -1
        out_sc[r] = -np.inf


@njit(cache=True, inline="always")
def _insert(out_idx, out_sc, cnt, k, j, s):
    """Insert (s, j) into the sorted run ``out[:cnt]`` (score desc, row asc); returns the new count."""
    if cnt == k and not _worse(out_sc[k - 1], out_idx[k - 1], s, j):
        return cnt
    pos = cnt if cnt < k else k - 1
    while pos > 0 and _worse(out_sc[pos - 1], out_idx[pos - 1], s, j):
        out_sc[pos] = out_sc[pos - 1]
        out_idx[pos] = out_idx[pos - 1]
        pos -= 1
    out_sc[pos] = s
    out_idx[pos] = j
    return cnt + 1 if cnt < k else cnt


@njit(cache=True)
def topk_with_popular(cand, vals, c, acc, f, top, us, it, sc, u, k, out_idx, out_sc, marked=False):
    """The top-k over the whole catalog when only candidates have scores of their own.

    ``cand[:c]`` are the candidate rows (``acc[j] != 0`` marks them) with scores
    ``vals[:c]``; every other active item j scores ``f * pop(j) / pop(top)`` (``top``: the
    most popular item's row), the
    popularity term alone. The candidates' top-k is merged with the popularity order, which
    is the order of those scores (ties to the lower row, as everywhere), so the result is
    what ranking every item would give, at the cost of the candidates plus the user's
    history. The user's items and retired ones are excluded (``marked``: the caller has
    marked the user's items in ``sc.excl`` already). The order is sorted in its head only
    (``popularity``): a walk that the head does not settle goes on over the whole tail.
    """
    excl, active = sc.excl, it.active
    if not marked:
        mark_history(us.hoff, us.hlen, us.hpool, u, excl, 1)
    cnt = 0
    for t in range(c):
        j = cand[t]
        s = vals[t]
        if active[j] == 0 or excl[j] != 0 or not (s == s):
            continue
        cnt = _insert(out_idx, out_sc, cnt, k, j, s)
    n_cat = it.n[0]
    plin = it.plin
    if f > 0.0:
        order = it.porder
        walked = True
        for r in range(min(n_cat, HEAD)):
            j = order[r]
            if active[j] == 0 or excl[j] != 0 or acc[j] != 0.0:
                continue
            s = f * pop_relative(plin, j, top)
            if cnt == k and s < out_sc[k - 1]:
                walked = False
                break  # the order only goes down from here
            cnt = _insert(out_idx, out_sc, cnt, k, j, s)
        if walked and n_cat > HEAD:  # the head did not settle it: the tail, in no order
            for r in range(HEAD, n_cat):
                j = order[r]
                if active[j] == 0 or excl[j] != 0 or acc[j] != 0.0:
                    continue
                s = f * pop_relative(plin, j, top)
                if cnt == k and not _worse(out_sc[k - 1], out_idx[k - 1], s, j):
                    continue
                cnt = _insert(out_idx, out_sc, cnt, k, j, s)
    else:  # every other item scores 0: they come in row order
        for j in range(n_cat):
            if cnt == k and out_sc[k - 1] > 0.0:
                break
            if active[j] == 0 or excl[j] != 0 or acc[j] != 0.0:
                continue
            cnt = _insert(out_idx, out_sc, cnt, k, j, 0.0)
    if not marked:
        mark_history(us.hoff, us.hlen, us.hpool, u, excl, 0)
    for r in range(cnt, k):
        out_idx[r] = -1
        out_sc[r] = -np.inf
    return cnt


@njit(cache=True, nogil=True)
def mark_first_recs(F, rank_flag, topk, seq, first_rec, out_rows, out_seq):
    """Evaluation bookkeeping: items recommended for the first time in this batch (in the
    top-k of an event flagged ``rank_flag``); their first event's ``seq`` goes to
    ``first_rec`` and to ``out_rows``/``out_seq``; returns how many."""
    c = 0
    for e in range(F.shape[0]):
        if F[e] & rank_flag:
            for t in range(topk.shape[1]):
                r = topk[e, t]
                if r >= 0 and first_rec[r] < 0:
                    first_rec[r] = seq[e]
                    out_rows[c] = r
                    out_seq[c] = seq[e]
                    c += 1
    return c
