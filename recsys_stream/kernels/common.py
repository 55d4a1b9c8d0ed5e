"""Shared Numba helpers: a seeded random stream, stable hashing, numerics.

Everything here is ``@njit`` over scalars and arrays: no I/O, no Python objects.

The random stream is SplitMix64 (Steele, Lea & Flood 2014). Its whole state is one
``uint64`` kept in a 1-element array owned by the shard, so the position of the
stream is part of the model state and survives checkpoints.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30 = np.uint64(30)
_S27 = np.uint64(27)
_S31 = np.uint64(31)
_S11 = np.uint64(11)
_INV53 = 1.0 / 9007199254740992.0  # 2**-53


@njit(cache=True, inline="always")
def mix64(z):
    """SplitMix64 finaliser: a bijective avalanche of a uint64."""
    z = np.uint64(z)
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


@njit(cache=True, inline="always")
def hash_combine(a, b):
    """Order-dependent combination of two uint64 hashes (for feature crosses)."""
    return mix64(np.uint64(a) * _MIX1 + mix64(np.uint64(b) + _GOLDEN))


@njit(cache=True, inline="always")
def rng_next(state):
    """Next uint64 of the SplitMix64 stream whose state is ``state[0]``."""
    s = state[0] + _GOLDEN
    state[0] = s
    return mix64(s)


@njit(cache=True, inline="always")
def rng_uniform(state):
    """Uniform float64 in [0, 1)."""
    return np.float64(rng_next(state) >> _S11) * _INV53


@njit(cache=True, inline="always")
def rng_below(state, n):
    """Uniform integer in [0, n) for n >= 1 (multiply-shift, negligible bias for n < 2**32)."""
    return np.int64(rng_uniform(state) * n)


@njit(cache=True, inline="always")
def rng_next_at(states, k):
    """Next uint64 of the SplitMix64 stream whose state is ``states[k]`` (one stream per
    row: a user's draws do not depend on which other users share its state)."""
    s = states[k] + _GOLDEN
    states[k] = s
    return mix64(s)


@njit(cache=True, inline="always")
def rng_uniform_at(states, k):
    return np.float64(rng_next_at(states, k) >> _S11) * _INV53


@njit(cache=True, inline="always")
def rng_below_at(states, k, n):
    return np.int64(rng_uniform_at(states, k) * n)


@njit(cache=True)
def rng_normal_at(states, k):
    u1 = rng_uniform_at(states, k)
    if u1 < 1e-300:
        u1 = 1e-300
    u2 = rng_uniform_at(states, k)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit(cache=True)
def rng_normal(state):
    """Standard normal draw (Box-Muller, one value per call for simplicity)."""
    u1 = rng_uniform(state)
    if u1 < 1e-300:
        u1 = 1e-300
    u2 = rng_uniform(state)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit(cache=True, inline="always")
def sigmoid(x):
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@njit(cache=True, inline="always")
def clip(x, lo, hi):
    if x < lo:
        return lo
    if x > hi:
        return hi
    return x
