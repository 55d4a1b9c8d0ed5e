"""The state every model shares inside a shard, and the per-event bookkeeping on it.

A shard's common arrays travel into kernels as one tuple, ``core``::

    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl,
     porder, prank, udirty, idirty)

- ``seen``/``seen_count``: pair set of (user row, item row) interactions (``pairset``);
- ``active``: uint8 per item row, 0 once the item is retired from the catalog;
- ``pop``/``pop_meta``/``porder``/``prank``: forward-decayed popularity and the items in
  popularity order (``popularity``);
- ``dims``: int64 ``[user rows, n_items]``: item rows are handed out in order of first
  appearance, so item row ``>= dims[1]`` means "not seen by the stream yet". A user row
  says nothing about the user's past (rows are reused after expiry and given out again
  when a stored user comes back): a user's history is ``uev``/``recent``/``hlen``, which
  are zero for a new user;
- ``uev``/``iev``: events per user row / item row (the user's count is its list version);
- ``recent``: int32 ``[users, R]`` ring of each user's last R items (slot ``uev % R``);
- ``rng``: the shard's SplitMix64 state (``common``);
- ``hoff``/``hlen``/``hpool``: each user's distinct items in order (``history``);
- ``excl``: uint8 scratch over item rows, all zero between calls (``user_topk`` marks a
  user's items in it while ranking);
- ``udirty``/``idirty``: uint8 per user/item row, set when the row's state changes (a
  checkpoint writes the dirty rows and clears them).

Outputs travel as one tuple, ``out``::

    (pred, pos, topk, lst, lst_sc)

- ``pred`` float32: the prequential prediction (rating or probability), NaN if none;
- ``pos`` int16: position of the event's item in the pre-learning top-k, -1 for a miss,
  -2 when the event was not ranked;
- ``topk`` int32 ``[n, k]``: the pre-learning top-k (rows, -1 padded);
- ``lst``/``lst_sc``: the list after learning from the event, for events flagged
  ``WANT_LIST`` (what is sent to subscribers).
"""

from __future__ import annotations

from numba import njit

from .history import history_append, mark_history
from .pairset import pairset_add
from .popularity import pop_learn, pop_topk
from .topk import topk_masked

# Event flags, set per event by the model wrapper.
EVALUATE = 1  # compute the prequential prediction / ranking before learning
LEARN = 2  # update the model's parameters with the event
WANT_LIST = 4  # compute the user's list after learning (to be emitted)
RANK = 8  # rank the catalog before learning (ranking metrics)
PEEK = 16  # read only: with WANT_LIST, the user's current list; nothing is learned or recorded


@njit(cache=True, inline="always")
def observe(core, u, i, t, weight):
    """Record interaction (u, i) at time t: seen set, counts, popularity, recency ring."""
    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl, porder, prank,
     udirty, idirty) = core
    if u >= dims[0]:
        dims[0] = u + 1
    if i >= dims[1]:
        # rows arrive in order: the new item takes the last place in the popularity order
        for r in range(dims[1], i + 1):
            porder[r] = r
            prank[r] = r
        dims[1] = i + 1
    if pairset_add(seen, seen_count, u, i):
        history_append(hoff, hlen, hpool, u, i)
    if pop_learn(pop, dims[1], pop_meta, i, t, weight, porder, prank):
        for j in range(dims[1]):  # a rescale changed every item's score
            idirty[j] = 1
    udirty[u] = 1
    idirty[i] = 1
    R = recent.shape[1]
    recent[u, uev[u] % R] = i
    uev[u] += 1
    iev[i] += 1


@njit(cache=True, inline="always")
def recent_item(recent, uev, u, back):
    """The user's item ``back`` steps ago (0 = most recent), or -1."""
    n = uev[u]
    R = recent.shape[1]
    if back >= n or back >= R:
        return -1
    return recent[u, (n - 1 - back) % R]


@njit(cache=True)
def user_topk(scores, n_cat, u, core, k, out_idx, out_sc):
    """Top-k of ``scores[:n_cat]`` for user row u, excluding the user's items and retired
    ones (u < 0: an unknown user, nothing of theirs to exclude); returns the count."""
    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl, porder, prank,
     udirty, idirty) = core
    mark_history(hoff, hlen, hpool, u, excl, 1)
    c = topk_masked(scores, n_cat, excl, active, k, out_idx, out_sc)
    mark_history(hoff, hlen, hpool, u, excl, 0)
    return c


@njit(cache=True)
def user_pop_topk(u, core, n_cat, k, out_idx, out_sc):
    """The popularity list of user row u (their items excluded): the list of a user the
    model does not know yet."""
    (seen, seen_count, active, pop, pop_meta, dims, uev, iev, recent, rng, hoff, hlen, hpool, excl, porder, prank,
     udirty, idirty) = core
    mark_history(hoff, hlen, hpool, u, excl, 1)
    c = pop_topk(pop, porder, n_cat, excl, active, k, out_idx, out_sc)
    mark_history(hoff, hlen, hpool, u, excl, 0)
    return c


@njit(cache=True)
def popular_list(core, k, out_idx, out_sc):
    """The popularity list of a user nobody knows (nothing excluded but retired items)."""
    return user_pop_topk(-1, core, core[5][1], k, out_idx, out_sc)
