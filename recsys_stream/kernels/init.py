"""Initial values of factor rows.

A user row is drawn from the user's own random stream (``us.rng[u]``, seeded by the user
id's hash and the job's seed, ``init_user_rng``) at the user's first update: whichever key
group, worker or process holds the user, and whoever else is there, the draws are the same.

An item row is drawn when the row is created, from a stream seeded by the item id's hash
and the job's seed (``init_item_rows``): any process, shard or owner that creates the row
gets the same values, whatever it saw before.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .common import mix64, rng_normal, rng_normal_at


@njit(cache=True, inline="always")
def init_user_row(M, r, std, us):
    for d in range(M.shape[1]):
        M[r, d] = std * rng_normal_at(us.rng, r)


@njit(cache=True)
def init_item_rows(M, first, last, keys, seed, std):
    """Rows ``first <= r < last`` of ``M`` from N(0, std^2), each from its own stream
    seeded by ``mix64(key ^ seed)``."""
    state = np.empty(1, dtype=np.uint64)
    for r in range(first, last):
        state[0] = mix64(keys[r] ^ seed)
        for d in range(M.shape[1]):
            M[r, d] = std * rng_normal(state)


USER_SALT = np.uint64(0x7573657273747265)  # "userstre": user streams differ from item streams of the same id


@njit(cache=True)
def init_user_rng(rng, rows, keys, seed):
    """The random stream of each new user row: ``mix64(key ^ mix64(seed ^ USER_SALT))``."""
    base = mix64(seed ^ USER_SALT)
    for t in range(rows.shape[0]):
        rng[rows[t]] = mix64(keys[t] ^ base)
