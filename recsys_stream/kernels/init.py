"""Initial values of factor rows.

A user row is drawn from the user side's random stream (``us.rng``) at the user's first
update: users live in one shard, so the stream's position is part of that shard's state.

An item row is drawn when the row is created, from a stream seeded by the item id's hash
and the job's seed (``init_item_rows``): any process, shard or owner that creates the row
gets the same values, whatever it saw before.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .common import mix64, rng_normal


@njit(cache=True, inline="always")
def init_user_row(M, r, std, us):
    for d in range(M.shape[1]):
        M[r, d] = std * rng_normal(us.rng)


@njit(cache=True)
def init_item_rows(M, first, last, keys, seed, std):
    """Rows ``first <= r < last`` of ``M`` from N(0, std^2), each from its own stream
    seeded by ``mix64(key ^ seed)``."""
    state = np.empty(1, dtype=np.uint64)
    for r in range(first, last):
        state[0] = mix64(keys[r] ^ seed)
        for d in range(M.shape[1]):
            M[r, d] = std * rng_normal(state)
