"""The structures kernels receive: named tuples of arrays, one per concern.

Every kernel takes the same few structures, so adding an array to one of them touches
its declaration and the code that reads it, never a positional unpacking elsewhere:

- ``UserK``: the user side of a shard, rows are the shard's user rows
  (``uev`` events per user, ``recent`` ring of the last R items, ``hoff``/``hlen``/``hpool``
  each user's distinct items in order (``history``), ``seen``/``seen_count`` the
  (user, item) pair set (``pairset``), ``rng`` the SplitMix64 state of the user side's
  draws (``common``), ``dirty`` rows changed since the last checkpoint);
- ``ItemK``: the item side (``n[0]`` the catalog extent: item rows are handed out in
  order of first appearance, so a row ``>= n[0]`` is "not seen yet"; ``active`` 0 once
  retired; ``pop``/``pop_meta``/``porder``/``prank`` decayed popularity and the items in
  popularity order (``popularity``); ``iev`` events per item; ``dirty``; ``key`` the
  item id's 64-bit hash, which seeds the row's initial values; ``seed`` the job's seed);
- ``Scratch``: per-thread work arrays over item rows, all zero between calls (``excl``
  marks a user's items while ranking; ``scores``; ``sc_k`` a top-k's scores);
- ``Batch``: the events of one kernel call (rows, values, labels, times, types, flags,
  context features as CSR);
- ``Out``: what a call hands back per event (``pred`` prediction or NaN, ``pos`` the
  event's item position in the pre-learning top-k (-1 miss, -2 not ranked), ``topk``
  that top-k, ``lst``/``lst_sc`` the list after learning, for events flagged WANT_LIST).

A model adds its own named tuple (its arrays of both sides and its hyper-parameters,
see ``driver``).
"""

from __future__ import annotations

from collections import namedtuple

# Event flags, set per event by the model wrapper.
EVALUATE = 1  # compute the prequential prediction before learning
LEARN = 2  # update the model's parameters with the event
WANT_LIST = 4  # compute the user's list after learning (to be emitted)
RANK = 8  # rank the catalog before learning (ranking metrics)
PEEK = 16  # read only: with WANT_LIST, the user's current list; nothing is learned or recorded

UserK = namedtuple("UserK", ["uev", "recent", "hoff", "hlen", "hpool", "seen", "seen_count", "rng", "dirty"])
ItemK = namedtuple("ItemK", ["n", "active", "pop", "pop_meta", "porder", "prank", "iev", "dirty", "key", "seed"])
Scratch = namedtuple("Scratch", ["scores", "excl", "sc_k"])
Batch = namedtuple("Batch", ["U", "I", "V", "Y", "T", "E", "F", "ctx_ptr", "ctx_hash"])
Out = namedtuple("Out", ["pred", "pos", "topk", "lst", "lst_sc"])
