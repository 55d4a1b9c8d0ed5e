"""The structures kernels receive: one per concern, each a numba ``structref`` (a struct
passed by reference, so a step called per event passes a pointer, not dozens of arrays).

Every kernel takes the same few structures, so adding an array to one of them touches
its declaration and the code that reads it, never a positional unpacking elsewhere:

- ``UserK``: the user side of a shard, rows are the shard's user rows
  (``uev`` events per user, ``recent`` ring of the last R items, ``hoff``/``hlen``/``hpool``
  each user's distinct items in order (``history``), ``seen``/``seen_count`` the
  (user, item) pair set (``pairset``), ``rng`` the SplitMix64 state of the user side's
  draws (``common``), ``dirty`` rows changed since the last checkpoint);
- ``ItemK``: the item side (``n[0]`` the catalog extent: item rows are handed out in
  order of first appearance, so a row ``>= n[0]`` is "not seen yet"; ``active`` 0 once
  retired; ``pop``/``plin``/``pop_meta``/``porder``/``prank`` decayed popularity (log and
  derived linear) and the items in popularity order (``popularity``); ``iev`` events per
  item; ``dirty`` rows changed since they were last sent to their owners; ``key`` the item
  id's 64-bit hash, which seeds the row's initial values; ``seed`` the job's seed;
  ``plog_i``/``plog_x``/``plog_n`` the call's log of popularity increments when the item
  side is shared (capacity 0 otherwise), which owners replay in order);
- ``Scratch``: per-thread work arrays over item rows, all zero between calls (``excl``
  marks a user's items while ranking; ``scores``; ``sc_k`` a top-k's scores);
- ``Batch``: the events of one kernel call (rows, values, labels, times, types, flags,
  context features as CSR);
- ``Out``: what a call hands back per event (``pred`` prediction or NaN, ``pos`` the
  event's item position in the pre-learning top-k (-1 miss, -2 not ranked), ``topk``
  that top-k, ``lst``/``lst_sc`` the list after learning, for events flagged WANT_LIST,
  ``why_item``/``why_val``/``why_src`` its reasons, for events flagged EXPLAIN too; those
  three are (1, k) when no event of the call is).

A model adds its own structure (its arrays of both sides and its hyper-parameters, a
named tuple of scalars), declared with ``define`` like these, and registers its steps for
that structure's type (``driver``).

Why not named tuples: a tuple of arrays is passed by value, and every binding of it binds
each array anew with an atomic reference-count increment and decrement; a model whose
steps took ~40 arrays per event spent more time counting references than learning.
"""

from __future__ import annotations

from numba import njit, types
from numba.experimental import structref

# Event flags, set per event by the model wrapper.
EVALUATE = 1  # compute the prequential prediction before learning
LEARN = 2  # update the model's parameters with the event
WANT_LIST = 4  # compute the user's list after learning (to be emitted)
RANK = 8  # rank the catalog before learning (ranking metrics)
PEEK = 16  # read only: with WANT_LIST, the user's current list; nothing is learned or recorded
EXPLAIN = 32  # with WANT_LIST: the list's reasons too (``explain``)

# What a learn step returns.
OK = 0
DIVERGED = 1  # a parameter became NaN or Inf
NEED_ROOM = 2  # a pool is too small for this event: nothing was changed; grow it and resume here


class _Type(types.StructRef):
    def preprocess_fields(self, fields):
        return tuple((name, types.unliteral(typ)) for name, typ in fields)


def define(name: str, fields: list[str], module: str):
    """Declare structure ``name`` with ``fields`` for ``module``: returns the Python-side
    proxy (constructed positionally) and the numba type class (steps are registered for
    it), which the module must bind to the same names at its top level (numba's cache finds
    types by qualified name). The module then defines the structure's cached constructor
    and binds it with ``bind_constructor``."""
    typ = type(name + "Type", (_Type,), {"__module__": module, "__qualname__": name + "Type"})
    structref.register(typ)
    proxy = type(name, (structref.StructRefProxy,), {"__module__": module, "__qualname__": name,
                                                     "FIELDS": tuple(fields), "__slots__": ()})
    structref.define_proxy(proxy, typ, list(fields))
    return proxy, typ


def bind_constructor(proxy, ctor) -> None:
    """Python-side construction goes through ``ctor``, a cached ``@njit`` function of the
    module (structref's own constructor is compiled anew in every process)."""

    def new(cls, *args):
        if len(args) != len(cls.FIELDS):
            raise TypeError(f"{cls.__name__} takes {len(cls.FIELDS)} fields {cls.FIELDS}, got {len(args)}")
        return ctor(*args)

    proxy.__new__ = new


UserK, UserKType = define("UserK", ["uev", "recent", "hoff", "hlen", "hpool", "seen", "seen_count", "rng", "dirty"], __name__)
ItemK, ItemKType = define("ItemK", ["n", "active", "pop", "plin", "pop_meta", "porder", "prank", "iev", "dirty", "key",
                                    "seed", "plog_i", "plog_x", "plog_n"], __name__)
Scratch, ScratchType = define("Scratch", ["scores", "excl", "sc_k"], __name__)
Batch, BatchType = define("Batch", ["U", "I", "V", "Y", "T", "E", "F", "ctx_ptr", "ctx_hash"], __name__)
Out, OutType = define("Out", ["pred", "pos", "topk", "lst", "lst_sc", "why_item", "why_val", "why_src"], __name__)


@njit(cache=True)
def _new_user(uev, recent, hoff, hlen, hpool, seen, seen_count, rng, dirty):
    return UserK(uev, recent, hoff, hlen, hpool, seen, seen_count, rng, dirty)


@njit(cache=True)
def _new_item(n, active, pop, plin, pop_meta, porder, prank, iev, dirty, key, seed, plog_i, plog_x, plog_n):
    return ItemK(n, active, pop, plin, pop_meta, porder, prank, iev, dirty, key, seed, plog_i, plog_x, plog_n)


@njit(cache=True)
def _new_scratch(scores, excl, sc_k):
    return Scratch(scores, excl, sc_k)


@njit(cache=True)
def _new_batch(U, I, V, Y, T, E, F, ctx_ptr, ctx_hash):
    return Batch(U, I, V, Y, T, E, F, ctx_ptr, ctx_hash)


@njit(cache=True)
def _new_out(pred, pos, topk, lst, lst_sc, why_item, why_val, why_src):
    return Out(pred, pos, topk, lst, lst_sc, why_item, why_val, why_src)


bind_constructor(UserK, _new_user)
bind_constructor(ItemK, _new_item)
bind_constructor(Scratch, _new_scratch)
bind_constructor(Batch, _new_batch)
bind_constructor(Out, _new_out)
