"""The one prequential loop every model runs through, and the steps a model provides.

For each event of a batch, in order::

    prep         the model's per-event work shared by the next steps (candidates, features)
    rank         if RANK: the top-k before learning -> out.topk[e], out.pos[e]
    predict      if EVALUATE: the rating / like probability before learning -> out.pred[e]
    learn_pre    if LEARN: updates that must see the user's history *without* this event
    observe      unless PEEK: record the interaction (seen set, history, counts, popularity)
    learn_post   if LEARN: updates that must see it *with* this event (e.g. sampling
                 negatives among items the user does not have, this one included)
    recommend    if WANT_LIST: the user's list after the event -> out.lst[e], out.lst_sc[e]
    explain      if EXPLAIN too: why each item of that list is there -> out.why_*[e]
                 (``explain``; the state is the one ``recommend`` saw)

so "evaluate, then learn" and where each model learns relative to ``observe`` are written
once, here, and each model states which learn step it uses (in its module docstring).

A model registers its steps for the type of its state structure (``layout.define``: its
arrays and hyper-parameters)::

    register_steps(MFKType, prep=mf_prep, rank=mf_rank, predict=mf_predict, learn_pre=mf_learn,
                   recommend=mf_recommend)

Each step is an ``@njit`` function with the signature of its stub below; a step a model
does not register is a no-op (``predict`` then gives NaN, the learn steps succeed,
``rank``/``recommend`` return 0 items). A learn step returns ``OK``, ``DIVERGED`` (a
parameter became NaN or Inf: the loop stops and returns the event's index, the caller
raises ``ModelDivergedError``) or ``NEED_ROOM`` (a pool is too small for this event and
nothing was changed yet: the loop returns ``-(index + 2)``, the caller grows the pool and
resumes the batch at that event); the loop returns -1 when the batch completed.

Dispatch is by the type of the model structure at compile time (``numba.extending.overload``),
so ``prequential`` is compiled once per model and cached on disk, with direct calls to the
model's steps.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numba.extending import overload

from .core import observe
from .explain import no_reason
from .layout import DIVERGED, EVALUATE, EXPLAIN, LEARN, OK, PEEK, RANK, WANT_LIST
from .topk import position_in

_STEPS: dict = {}
STEP_NAMES = ("prep", "rank", "predict", "learn_pre", "learn_post", "recommend", "explain")


def register_steps(state_cls, **steps) -> None:
    """Register a model's steps for its state tuple type (see the module docstring)."""
    bad = set(steps) - set(STEP_NAMES)
    if bad:
        raise ValueError(f"unknown step(s) {sorted(bad)}; the steps are {', '.join(STEP_NAMES)}")
    _STEPS[state_cls] = dict(steps)


def registered_steps(state_cls) -> dict:
    return dict(_STEPS.get(state_cls, {}))


# -- the stubs: their signatures are the contract -----------------------------------------


def step_prep(m, us, it, sc, b, e):
    raise NotImplementedError


def step_rank(m, us, it, sc, b, e, k, out_idx, out_sc):
    raise NotImplementedError


def step_predict(m, us, it, sc, b, e):
    raise NotImplementedError


def step_learn_pre(m, us, it, sc, b, e):
    raise NotImplementedError


def step_learn_post(m, us, it, sc, b, e):
    raise NotImplementedError


def step_recommend(m, us, it, sc, u, t, k, out_idx, out_sc):
    raise NotImplementedError


def step_explain(m, us, it, sc, u, k, idx, scores, why_item, why_val, why_src):
    raise NotImplementedError


def _impl(m, name):
    f = _STEPS.get(type(m), {}).get(name)
    # the step's Python function, compiled as this overload's implementation: a call that
    # passes the structures by reference (``layout``)
    return None if f is None else f.py_func


def _noop(m, us, it, sc, b, e):
    return None


def _noop_ok(m, us, it, sc, b, e):
    return OK


def _noop_nan(m, us, it, sc, b, e):
    return np.nan


def _noop_rank(m, us, it, sc, b, e, k, out_idx, out_sc):
    return 0


def _noop_recommend(m, us, it, sc, u, t, k, out_idx, out_sc):
    return 0


def _noop_explain(m, us, it, sc, u, k, idx, scores, why_item, why_val, why_src):
    for r in range(k):  # no reason of the model's own (``explain``: source 0)
        no_reason(r, why_item, why_val, why_src)


@overload(step_prep)
def _ov_prep(m, us, it, sc, b, e):
    return _impl(m, "prep") or _noop


@overload(step_rank)
def _ov_rank(m, us, it, sc, b, e, k, out_idx, out_sc):
    return _impl(m, "rank") or _noop_rank


@overload(step_predict)
def _ov_predict(m, us, it, sc, b, e):
    return _impl(m, "predict") or _noop_nan


@overload(step_learn_pre)
def _ov_learn_pre(m, us, it, sc, b, e):
    return _impl(m, "learn_pre") or _noop_ok


@overload(step_learn_post)
def _ov_learn_post(m, us, it, sc, b, e):
    return _impl(m, "learn_post") or _noop_ok


@overload(step_recommend)
def _ov_recommend(m, us, it, sc, u, t, k, out_idx, out_sc):
    return _impl(m, "recommend") or _noop_recommend


@overload(step_explain)
def _ov_explain(m, us, it, sc, u, k, idx, scores, why_item, why_val, why_src):
    return _impl(m, "explain") or _noop_explain


@njit(cache=True, nogil=True)
def prequential(m, us, it, sc, b, k, out):
    """Run every event of ``b`` through the model's steps (see the module docstring)."""
    sc_k = sc.sc_k
    for e in range(b.U.shape[0]):
        u = b.U[e]
        i = b.I[e]
        f = b.F[e]
        step_prep(m, us, it, sc, b, e)
        if f & RANK:
            c = step_rank(m, us, it, sc, b, e, k, out.topk[e], sc_k)
            out.pos[e] = position_in(out.topk[e], c, i) if i < it.n[0] else -1
        if f & EVALUATE:
            out.pred[e] = step_predict(m, us, it, sc, b, e)
        if f & LEARN:
            st = step_learn_pre(m, us, it, sc, b, e)
            if st != OK:
                return e if st == DIVERGED else -(e + 2)
        if not (f & PEEK):
            observe(us, it, u, i, b.T[e])
        if f & LEARN:
            st = step_learn_post(m, us, it, sc, b, e)
            if st != OK:
                return e if st == DIVERGED else -(e + 2)
        if f & WANT_LIST:
            step_recommend(m, us, it, sc, u, b.T[e], k, out.lst[e], sc_k)
            for r in range(k):
                out.lst_sc[e, r] = sc_k[r]
            if f & EXPLAIN:
                step_explain(m, us, it, sc, u, k, out.lst[e], out.lst_sc[e], out.why_item[e], out.why_val[e],
                             out.why_src[e])
    return -1
