"""Popularity baseline: rank by recency-decayed popularity (``popularity``).

Its state is the item side's shared popularity, so the model tuple holds nothing but
what ``driver`` dispatches on. Steps: ``rank`` and ``recommend`` (the popularity order,
the user's items excluded); it learns nothing beyond ``observe``.
"""

from __future__ import annotations


from numba import njit

from .core import user_pop_topk
from .driver import register_steps
from .explain import explain_popular
from .layout import bind_constructor, define
from .popularity import pop_now

PopK, PopKType = define("PopK", ['hp'], __name__)


@njit(cache=True)
def _new_popk(hp):
    return PopK(hp)


bind_constructor(PopK, _new_popk)


@njit(cache=True, inline="always")
def pop_rank(m, us, it, sc, b, e, k, out_idx, out_sc):
    return user_pop_topk(b.U[e], us, it, sc, k, out_idx, out_sc)


@njit(cache=True, inline="always")
def pop_recommend(m, us, it, sc, u, t, k, out_idx, out_sc):
    c = user_pop_topk(u, us, it, sc, k, out_idx, out_sc)
    for r in range(k):
        out_sc[r] = pop_now(it.pop, it.pop_meta, out_idx[r], t) if out_idx[r] >= 0 else 0.0
    return c


@njit(cache=True, inline="always")
def pop_explain(m, us, it, sc, u, k, idx, scores, why_item, why_val, why_src):
    explain_popular(k, idx, why_item, why_val, why_src)


register_steps(PopKType, rank=pop_rank, recommend=pop_recommend, explain=pop_explain)
