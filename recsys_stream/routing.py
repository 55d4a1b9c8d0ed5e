"""Routing users to shards, and shards to Bytewax workers.

Users are partitioned into ``n_shards`` key groups by a stable hash of the user id (as
Flink's key groups): ``shard = blake2b64(user) % n_shards``. A shard is the unit of state:
it owns its users' rows and, until item parameters are shared, its own copy of the item
side. ``n_shards`` is fixed for the life of a checkpoint; workers may change at a restore,
and then whole shards move.

Bytewax places a state key on worker ``siphash13(key) % workers``: Rust's
``DefaultHasher`` (SipHash-1-3, zero keys) over the key's ``Hash`` (its UTF-8 bytes then
0xFF). With few keys that often puts two shards on one worker (keys "0" and "1" both
land on worker 1 of 2), so shard keys are chosen so that, with ``workers == n_shards``,
shard j lands on worker j. ``tests/test_routing.py`` checks this against a real
multi-worker run, so a Bytewax change of hash is caught.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .events import stable_hash64

_M64 = (1 << 64) - 1


def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _M64


def siphash13(data: bytes, k0: int = 0, k1: int = 0) -> int:
    """SipHash-1-3 (one compression round, three finalisation rounds)."""
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rnd(v0, v1, v2, v3):
        v0 = (v0 + v1) & _M64
        v1 = _rotl(v1, 13) ^ v0
        v0 = _rotl(v0, 32)
        v2 = (v2 + v3) & _M64
        v3 = _rotl(v3, 16) ^ v2
        v0 = (v0 + v3) & _M64
        v3 = _rotl(v3, 21) ^ v0
        v2 = (v2 + v1) & _M64
        v1 = _rotl(v1, 17) ^ v2
        v2 = _rotl(v2, 32)
        return v0, v1, v2, v3

    n = len(data)
    end = n - n % 8
    for i in range(0, end, 8):
        m = int.from_bytes(data[i : i + 8], "little")
        v3 ^= m
        v0, v1, v2, v3 = rnd(v0, v1, v2, v3)
        v0 ^= m
    last = ((n & 0xFF) << 56) | int.from_bytes(data[end:], "little")
    v3 ^= last
    v0, v1, v2, v3 = rnd(v0, v1, v2, v3)
    v0 ^= last
    v2 ^= 0xFF
    for _ in range(3):
        v0, v1, v2, v3 = rnd(v0, v1, v2, v3)
    return v0 ^ v1 ^ v2 ^ v3


def bytewax_worker(key: str, workers: int) -> int:
    """The worker Bytewax 0.21 gives a state key, for ``workers`` workers in total."""
    return siphash13(key.encode("utf-8") + b"\xff") % workers


@lru_cache(maxsize=64)
def shard_keys(n_shards: int) -> tuple[str, ...]:
    """Stable state-key names for ``n_shards`` shards, shard j on worker j of n_shards."""
    keys = []
    for j in range(n_shards):
        salt = 0
        while True:
            key = f"shard-{j}-of-{n_shards}" + (f"~{salt}" if salt else "")
            if bytewax_worker(key, n_shards) == j:
                break
            salt += 1
        keys.append(key)
    return tuple(keys)


class UserRouter:
    """User id -> shard index, with a cache of the ids seen (hashing runs once per id)."""

    def __init__(self, n_shards: int):
        if n_shards < 1:
            raise ValueError(f"n_shards must be >= 1, got {n_shards}")
        self.n_shards = n_shards
        self._cache: dict[str, int] = {}

    def shard_of(self, user: str) -> int:
        s = self._cache.get(user)
        if s is None:
            s = stable_hash64(user) % self.n_shards
            if len(self._cache) < 4_000_000:
                self._cache[user] = s
        return s

    def shards(self, users: np.ndarray) -> np.ndarray:
        if self.n_shards == 1:
            return np.zeros(len(users), dtype=np.int64)
        get = self._cache.get
        out = np.fromiter((get(u, -1) for u in users), dtype=np.int64, count=len(users))
        for j in np.flatnonzero(out < 0):
            out[j] = self.shard_of(users[j])
        return out


@lru_cache(maxsize=64)
def bucket_keys(n_buckets: int) -> tuple[str, ...]:
    """State-key names of the item buckets' owners (placed by Bytewax's hash: with many
    more buckets than workers, each worker owns about as many)."""
    return tuple(f"items-{b}-of-{n_buckets}" for b in range(n_buckets))
