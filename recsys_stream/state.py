"""Keyed state: the user and item sides of a model, built of declared arrays
(``arrays``: ``ArraySpec``, ``StateArrays``, ``IdMap``) and pooled structures (``pools``);
the same declarations drive checkpoints and digests.

``UserState`` holds what is keyed by user (ids, rows, histories, the seen set, the random
stream of user-side draws); ``ItemState`` what is keyed by item or global to the item side
(ids, factor rows, counts, popularity and its order, co-occurrence, hashed weights). Each
grows on its own, and each turns itself into the named tuple its kernels read
(``kernels.layout``).
"""

from __future__ import annotations

import math
import threading

import numpy as np

from .arrays import GLOBAL, ROW, ArraySpec, IdMap, StateArrays  # noqa: F401 (the state's vocabulary)
from .events import stable_hash64
from .kernels.init import init_item_rows, init_user_rng
from .kernels.layout import ItemK, UserK
from .kernels.pairset import pairset_add_many, pairset_new, pairset_rebuild_without
from .kernels.popularity import pop_refresh, pop_resort
from .pools import History, NeighborPool, PairSet  # noqa: F401


def user_core_specs(recent: int) -> list[ArraySpec]:
    return [
        ArraySpec("uev", ROW, (), "int64"),
        ArraySpec("recent", ROW, (recent,), "int32", fill=-1, items=True),
        ArraySpec("rng", ROW, (), "uint64"),  # the user's own random stream (kernels.init.init_user_rng)
        ArraySpec("group", ROW, (), "int32", stored=False),  # the user's key group (its checkpoint part)
        # the history's layout in its pool and the changed rows: rebuilt, not stored
        ArraySpec("hist.off", ROW, (), "int64", stored=False),
        ArraySpec("hist.len", ROW, (), "int64", stored=False),
        ArraySpec("hist.cap", ROW, (), "int64", stored=False),
        ArraySpec("dirty", ROW, (), "uint8", stored=False),
        ArraySpec("last_ts", ROW, (), "float64"),  # the user's latest event time (expiry, and a read's clock)
    ]


def item_core_specs() -> list[ArraySpec]:
    return [
        ArraySpec("active", ROW, (), "uint8", fill=1, merge="owner"),
        # log of the decayed mass (kernels.popularity), and its linear copy
        ArraySpec("pop", ROW, (), "float64", fill=-np.inf, merge="log"),
        ArraySpec("plin", ROW, (), "float64", stored=False),
        ArraySpec("pop_meta", GLOBAL, (2,), "float64", merge="local"),  # [rate (from the half-life), plin's reference]
        ArraySpec("iev", ROW, (), "int64"),
        # derived: the catalog extent, the popularity order, the id hashes, the seed
        ArraySpec("n", GLOBAL, (1,), "int64", stored=False),
        ArraySpec("pop.order", ROW, (), "int32", stored=False),
        ArraySpec("pop.rank", ROW, (), "int32", stored=False),
        ArraySpec("key", ROW, (), "uint64", stored=False),
        ArraySpec("seed", GLOBAL, (1,), "uint64", stored=False),
        ArraySpec("dirty", ROW, (), "uint8", stored=False),
        # evaluation bookkeeping (not model state): first event that recommended an item
        ArraySpec("book.first_rec", ROW, (), "int64", fill=-1, stored=False),
    ]


class UserState:
    """The user side of a shard (see the module docstring)."""

    def __init__(self, specs: list[ArraySpec], recent: int, seed: int):
        self.ids = IdMap()
        self.arrays = StateArrays(user_core_specs(max(recent, 1)) + list(specs))
        self.seen = PairSet()
        self.history = History()
        self.seed = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
        self.total = 0  # distinct users met (in memory or stored)

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Rows of ``ids``; new users (``ids.new_rows``) get rows with their own random
        stream."""
        created = self.ids.created
        U, _ = self.ids.rows(ids)
        self.total += self.ids.created - created
        self.arrays.ensure(len(self.ids))
        new = self.ids.new_rows
        if new:
            names = self.ids.ids
            keys = np.fromiter((stable_hash64(names[r]) for r in new), dtype=np.uint64, count=len(new))
            init_user_rng(self.arrays["rng"], np.array(new, dtype=np.int64), keys, self.seed)
        return U

    def reserve(self, U: np.ndarray) -> None:
        """Room for one more interaction per event of ``U`` (seen set and histories)."""
        self.seen.reserve(len(U))
        users, counts = np.unique(U, return_counts=True)
        self.history.reserve(users, counts, self.arrays)

    def kernel(self) -> UserK:
        a = self.arrays
        return UserK(a["uev"], a["recent"], a["hist.off"], a["hist.len"], self.history.pool, self.seen.table,
                     self.seen.count, a["rng"], a["dirty"])

    def items_of(self, row: int) -> np.ndarray:
        return self.history.items(row, self.arrays)

    def restore_row(self, ext: str, values: list, hist: np.ndarray) -> int:
        """Put a user back (from a checkpoint): stored row values in ``arrays.stored(ROW)``
        order and the history; returns the row."""
        row = self.ids.add(ext)
        a = self.arrays
        a.ensure(len(self.ids))
        for spec, v in zip(a.stored(ROW), values):
            a[spec.name][row] = v
        h = len(hist)
        self.history.reserve(np.array([row]), np.array([h]), a)
        o = int(a["hist.off"][row])
        self.history.pool[o : o + h] = hist
        a["hist.len"][row] = h
        self.seen.reserve(h)
        pairset_add_many(self.seen.table, self.seen.count, row, np.ascontiguousarray(hist))
        return row

    def evict(self, rows: np.ndarray) -> None:
        """Drop users from memory (their state is stored): ids, rows, seen pairs."""
        if not len(rows):
            return
        drop = np.zeros(self.arrays.cap, dtype=np.uint8)
        drop[rows] = 1
        old = self.seen.table
        new = pairset_new(len(old))
        self.seen.count[0] = 0
        pairset_rebuild_without(new, self.seen.count, old, drop)
        self.seen.table = new
        ids = self.ids.ids
        for row in rows:
            self.ids.remove(ids[row])
        self.arrays.clear_rows(rows)


def _mix64(z: int) -> int:
    m = 0xFFFFFFFFFFFFFFFF
    z &= m
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & m
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & m
    return z ^ (z >> 31)


def _rate(half_life_days: float) -> float:
    return 0.0 if math.isinf(half_life_days) else math.log(2.0) / (half_life_days * 86400.0)


class ItemIndex:
    """External item ids <-> rows, shared by every item state of a process (the workers'
    replicas and the owners' store, ``items``), so an item has one row everywhere in the
    process and the states can exchange rows without ids. Also each row's id hash
    (``key``: it seeds the row's initial values and its owner bucket ``key % n_buckets``)."""

    def __init__(self, n_buckets: int = 1):
        if n_buckets < 1:
            raise ValueError(f"n_buckets must be >= 1, got {n_buckets}")
        self.ids = IdMap()
        self.n_buckets = n_buckets
        self.by_key: dict[int, int] = {}
        self.key = np.zeros(1024, dtype=np.uint64)
        self.bucket = np.zeros(1024, dtype=np.int32)
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids) -> tuple[np.ndarray, int]:
        with self.lock:
            first = len(self.ids)
            rows, _ = self.ids.rows(ids)
            self._grow(first)
        return rows, first

    def add(self, ext: str) -> int:
        with self.lock:
            first = len(self.ids)
            row = self.ids.add(ext)
            self._grow(first)
        return row

    def restore_rows(self, exts: list[str]) -> np.ndarray:
        """Rows of restored ids, adding the ones the index does not hold (as ``add``)."""
        with self.lock:
            first = len(self.ids)
            out = self.ids.lookup(exts)
            for t in np.flatnonzero(out < 0).tolist():
                out[t] = self.ids.add(exts[t])
            self._grow(first)
        return out

    def place(self, pairs: list[tuple[str, int]]) -> bool:
        """Give ids the rows they had when written (a restore of one process's state, so
        row-dependent choices replay exactly); False, placing nothing, when that is not
        possible (rows taken, or written by several processes)."""
        with self.lock:
            if len(self.ids) or len({r for _e, r in pairs}) != len(pairs):
                return False
            n = max((r for _e, r in pairs), default=-1) + 1
            ids: list = [None] * n
            for ext, r in pairs:
                ids[r] = ext
            if any(x is None for x in ids):
                return False
            for ext in ids:
                self.ids.add(ext)
            self._grow(0)
            return True

    def _grow(self, first: int) -> None:
        last = len(self.ids)
        if last == first:
            return
        if last > len(self.key):
            size = len(self.key)
            while size < last:
                size *= 2
            key = np.zeros(size, dtype=np.uint64)
            key[:first] = self.key[:first]
            bucket = np.zeros(size, dtype=np.int32)
            bucket[:first] = self.bucket[:first]
            self.key, self.bucket = key, bucket
        ids = self.ids.ids
        self.key[first:last] = np.fromiter((stable_hash64(ids[r]) for r in range(first, last)), dtype=np.uint64,
                                           count=last - first)
        self.bucket[first:last] = (self.key[first:last] % np.uint64(self.n_buckets)).astype(np.int32)
        by_key = self.by_key
        for r, k in zip(range(first, last), self.key[first:last].tolist()):
            by_key.setdefault(k, r)

    def rows_of_keys(self, keys: np.ndarray) -> np.ndarray:
        """Rows of item keys (-1 for a key no row has)."""
        get = self.by_key.get
        return np.fromiter((get(k, -1) for k in keys.tolist()), dtype=np.int64, count=len(keys))


class ItemState:
    """The item side (see the module docstring): arrays over the rows of an ``ItemIndex``
    (its own, or one shared by several states of a process)."""

    def __init__(self, specs: list[ArraySpec], half_life_days: float, seed: int, pools: dict | None = None,
                 index: ItemIndex | None = None):
        self.index = index if index is not None else ItemIndex()
        self.pools: dict[str, NeighborPool] = {}
        for name, (cap_max, dense_limit) in (pools or {}).items():
            self.pools[name] = NeighborPool(name, cap_max, dense_limit)
            specs = list(specs) + NeighborPool.specs(name)
        self.arrays = StateArrays(item_core_specs() + list(specs))
        for pool in self.pools.values():
            pool.fit(self.arrays, 0)
        self.arrays["pop_meta"][0] = _rate(half_life_days)
        self.arrays["pop_meta"][1] = -np.inf
        self.arrays["seed"][0] = np.uint64(_mix64(seed))
        self.created = 0  # rows of the index this state has initialised
        self.logging = False  # log increments for owners (``items.Replica``)
        self.on_rows = None  # called with (first, last) when rows are created
        self.plog_i = np.zeros(0, dtype=np.int32)
        self.plog_x = np.zeros(0, dtype=np.float64)
        self.plog_n = np.zeros(1, dtype=np.int64)
        # structures models derive from the rows and keep up to date themselves (a factor
        # model's retrieval index, ``factorindex.FactorIndex``), by name; dropped when rows change
        # in bulk (``resort``), rebuilt by their model when next needed
        self.derived: dict = {}
        self.sync()

    def start_log(self) -> None:
        self.logging = True

    def reserve_log(self, n_events: int, pair_entries: int) -> None:
        """Room in the increment logs for a batch (nothing when not logging)."""
        if not self.logging:
            return
        k = int(self.plog_n[0])
        if len(self.plog_i) < k + n_events:
            size = max(1024, 2 * (k + n_events))
            i, x = np.zeros(size, np.int32), np.zeros(size)
            i[:k], x[:k] = self.plog_i[:k], self.plog_x[:k]
            self.plog_i, self.plog_x = i, x
        for pool in self.pools.values():
            pool.reserve_log(pair_entries)

    def refresh_pop(self, rows: np.ndarray) -> None:
        """After ``pop`` of ``rows`` changed from outside (a publication): the linear copy
        and the order."""
        a = self.arrays
        pop_refresh(a["pop"], a["plin"], a["pop_meta"], self.n, a["pop.order"], a["pop.rank"],
                    np.ascontiguousarray(rows, dtype=np.int64))

    @property
    def ids(self) -> IdMap:
        return self.index.ids

    def __len__(self) -> int:
        return self.created

    @property
    def n(self) -> int:
        """The catalog extent: rows below it are items this state has seen."""
        return int(self.arrays["n"][0])

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, int]:
        """Rows of ``ids`` (created in the index if new); returns (rows, the index's first
        row created by this call)."""
        I, first_new = self.index.rows(ids)
        self.sync()
        return I, first_new

    def add(self, ext: str) -> int:
        row = self.index.add(ext)
        self.sync()
        return row

    def sync(self) -> None:
        """Cover every row of the index (rows another state created: initial values)."""
        first, last = self.created, len(self.index)
        if last == first:
            return
        a = self.arrays
        a.ensure(last)
        for pool in self.pools.values():
            pool.fit(a, last)
        key = a["key"]
        key[first:last] = self.index.key[first:last]
        for s in a.specs.values():
            if s.init_std > 0:
                init_item_rows(a[s.name], first, last, key, a["seed"][0], s.init_std)
        self.created = last
        if self.on_rows is not None:
            self.on_rows(first, last)
    def extend(self, row: int) -> None:
        """Make ``row`` part of the catalog (as ``kernels.core.extend_catalog``)."""
        a = self.arrays
        n = self.n
        if row >= n:
            a["pop.order"][n : row + 1] = np.arange(n, row + 1)
            a["pop.rank"][n : row + 1] = np.arange(n, row + 1)
            a["n"][0] = row + 1

    def resort(self) -> None:
        """Rebuild the popularity order (after a restore); the derived structures start
        over."""
        self.derived.clear()
        a = self.arrays
        pop_resort(a["pop"], a["plin"], a["pop_meta"], self.n, a["pop.order"], a["pop.rank"])

    def kernel(self) -> ItemK:
        a = self.arrays
        return ItemK(a["n"], a["active"], a["pop"], a["plin"], a["pop_meta"], a["pop.order"], a["pop.rank"], a["iev"],
                     a["dirty"], a["key"], a["seed"], self.plog_i, self.plog_x, self.plog_n)
