"""The factor models' retrieval inside their kernel steps: the inverted-file index
(``ivf``) as a structure a step receives, and the exact scan when it is off.

The index is kept current inside the kernel, with a stated staleness: a learn step
re-copies the item row it learns as a positive into the index at once (``ann_refresh``);
a row it changes as a sampled negative is re-copied when its update count (``ci``) is a
multiple of ``lag`` (``ann_refresh_lagged``), so a copy is at most ``lag - 1`` updates
of its row behind (``lag`` 1: every copy as fresh as its row). A negative's update is
one small step away from a user, and copies only choose the candidates (their scores are
exact), so re-copying it at once buys little and costs most of the index's upkeep: with
32 negatives an event, 32 of the 33 rows it changes. The index's state is a function of
the events in order, whatever the batches (one worker replays deterministically, the
list emitted at an event is what a read right after it gives). Before an event changes
rows, ``ann_ready`` says whether the index can take the changes; if not (the catalog reached ``want_at`` and a build is
due, the index's health asks for one, or the arena may run out of room) the step
returns ``NEED_ROOM`` before changing anything and the caller builds or grows the index
(``factorindex.FactorIndex.grow``) and resumes the batch at that event.

``AnnK`` fields: ``on`` (0: rank by the exact scan, ``topk.score_factors``), ``M``,
``nprobe``, ``cand`` (candidates re-scored exactly), ``quant``, ``check_every``, ``lag``,
``want_at`` (build when the catalog reaches it; -1 never), ``per_event`` (the most item
rows one event changes), the index's arrays (``ann.IVFIndex``, ``kernels.ivf``) and two
work arrays (``x``: a row's augmented vector, ``acc``: a score per list).
"""

from __future__ import annotations

from numba import njit

from .core import user_topk
from .history import mark_history
from .ivf import ivf_search, ivf_update_row
from .layout import bind_constructor, define
from .topk import score_factors

AnnK, AnnKType = define("AnnK", ["on", "M", "nprobe", "cand", "quant", "check_every", "lag", "want_at", "per_event",
                                 "centT", "cn", "lstart", "llen", "lcap", "used", "slot_row", "slot_q", "slot_scale",
                                 "slot_bias", "row_list", "row_slot", "stats", "x", "acc"], __name__)


@njit(cache=True)
def _new_annk(on, M, nprobe, cand, quant, check_every, lag, want_at, per_event, centT, cn, lstart, llen, lcap, used,
              slot_row, slot_q, slot_scale, slot_bias, row_list, row_slot, stats, x, acc):
    return AnnK(on, M, nprobe, cand, quant, check_every, lag, want_at, per_event, centT, cn, lstart, llen, lcap, used,
                slot_row, slot_q, slot_scale, slot_bias, row_list, row_slot, stats, x, acc)


bind_constructor(AnnK, _new_annk)


@njit(cache=True, inline="always")
def ann_room(per_event, lcap_max):
    """Arena slots an event's changes can need: each changed row may grow its list to
    twice the largest capacity."""
    return per_event * 2 * max(lcap_max, per_event, 8) + 64


@njit(cache=True, inline="always")
def ann_ready(a, n_cat):
    """Whether the index can take the next event's changes as it is (see the module
    docstring); the same test as ``factorindex.FactorIndex.ready``."""
    if a.want_at >= 0 and n_cat >= a.want_at:
        return False
    if not a.on:
        return True
    st = a.stats
    if a.M > 0.0 and st[0] >= 1000 and st[3] * 100 > st[0]:  # rows outgrew M
        return False
    if st[4] >= 50 and st[1] * 5 > st[4]:  # rows drifted out of their lists
        return False
    return a.slot_row.shape[0] - a.used[0] >= ann_room(a.per_event, st[5])


@njit(cache=True, inline="always")
def ann_refresh(a, Q, b, j):
    """Item row ``j`` changed: re-copy it into the index (nothing when the index is off)."""
    if a.on:
        if not ivf_update_row(j, Q, b, a.M, a.centT, a.cn, a.lstart, a.llen, a.lcap, a.used, a.slot_row, a.slot_q,
                              a.slot_scale, a.slot_bias, a.row_list, a.row_slot, a.quant, a.check_every, a.stats,
                              a.x, a.acc):
            a.stats[6] += 1  # no room, despite ann_ready: the row keeps its old copy


@njit(cache=True, inline="always")
def ann_refresh_lagged(a, Q, b, j, count):
    """Item row ``j`` changed as a sampled negative, its ``count``-th update: re-copy it
    into the index when ``count`` is a multiple of ``lag`` (see the module docstring)."""
    if a.on and count % a.lag == 0:
        ann_refresh(a, Q, b, j)


@njit(cache=True, inline="always")
def factor_topk(a, p, Q, b, us, it, sc, u, k, out_idx, out_sc):
    """The user's top-k by ``b[j] + p . Q[j]`` over the catalog, the user's items (row u;
    -1: none) and retired ones excluded: from the index when it is on, else the exact scan
    (``sc.scores`` then holds every item's score); returns the count."""
    n_cat = it.n[0]
    if not a.on:
        score_factors(p, Q, b, n_cat, sc.scores)
        return user_topk(sc.scores, n_cat, u, us, it, sc, k, out_idx, out_sc)
    mark_history(us.hoff, us.hlen, us.hpool, u, sc.excl, 1)
    c = ivf_search(p, Q, b, n_cat, sc.excl, it.active, a.M, a.centT, a.cn, a.lstart, a.llen, a.slot_row, a.slot_q,
                   a.slot_scale, a.slot_bias, a.nprobe, a.cand if a.cand > k else k, k, out_idx, out_sc)
    mark_history(us.hoff, us.hlen, us.hpool, u, sc.excl, 0)
    return c
