"""Initial values of factor rows.

A user row is drawn from the user side's random stream (``us.rng``): users live in one
shard, so the stream's position is part of that shard's state.

An item row is drawn from the shard's stream too (the initialisation every shard used
while each kept its own copy of the item side).
"""

from __future__ import annotations

from numba import njit

from .common import rng_normal


@njit(cache=True, inline="always")
def init_user_row(M, r, std, us):
    for d in range(M.shape[1]):
        M[r, d] = std * rng_normal(us.rng)


@njit(cache=True, inline="always")
def init_item_row(M, r, std, us, it):
    for d in range(M.shape[1]):
        M[r, d] = std * rng_normal(us.rng)
