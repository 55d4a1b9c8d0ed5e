"""Keyed state: id maps, named growable arrays, and the user and item sides of a model.

Every array a model or a shard keeps is declared with an ``ArraySpec`` saying whether its
rows are the side's rows (``ROW``) or it has one fixed shape (``GLOBAL``), and whether a checkpoint stores it or it is derived,
scratch or bookkeeping (``stored=False``: rebuilt or recomputed, never written). A
``StateArrays`` grows its arrays together (capacity doubling, new rows fill-initialised);
the same declarations drive checkpoints and digests.

``UserState`` holds what is keyed by user (ids, rows, histories, the seen set, the random
stream of user-side draws); ``ItemState`` what is keyed by item or global to the item side
(ids, factor rows, counts, popularity and its order, co-occurrence, hashed weights). Each
grows on its own, and each turns itself into the named tuple its kernels read
(``kernels.layout``).
"""

from __future__ import annotations

import heapq
import math
import threading
from dataclasses import dataclass
from itertools import repeat

import numpy as np

from .events import stable_hash64
from .kernels.history import history_compact, history_move, history_relocations
from .kernels.init import init_item_rows, init_user_rng
from .kernels.layout import ItemK, UserK
from .kernels.neighbors import FIRST_CAP, nb_compact
from .kernels.pairset import pairset_add_many, pairset_grow, pairset_new, pairset_rebuild_without
from .kernels.popularity import pop_refresh, pop_resort

ROW, GLOBAL = "row", "global"


@dataclass(frozen=True)
class ArraySpec:
    name: str
    kind: str = ROW  # ROW or GLOBAL
    tail: tuple = ()  # trailing shape (ROW) or the whole shape (GLOBAL)
    dtype: str = "float32"
    fill: float = 0
    stored: bool = True  # False: derived, scratch or bookkeeping; never checkpointed
    dirty: str = ""  # GLOBAL: the uint8 array marking which chunks changed (checkpoints write only those)
    init_std: float = 0.0  # item ROW arrays: > 0 draws a new row from N(0, std^2) seeded by the item id
    # item side shared by workers and processes (``items``): how an owner merges the array.
    # "add": replicas send their changes as differences, which owners add up; "log": the
    # kernels log their increments (popularity), which owners replay; "owner": only the
    # owner writes it (the catalog); "derived": owners recompute it from the rest;
    # "local": each state keeps its own (never sent)
    merge: str = "add"
    items: bool = False  # the values are item rows (checkpoints store them as item keys)


class StateArrays:
    """Named arrays whose leading dimension follows one row capacity."""

    def __init__(self, specs: list[ArraySpec], cap: int = 1024):
        self.specs: dict[str, ArraySpec] = {}
        self.cap = cap
        self.arrays: dict[str, np.ndarray] = {}
        self.add(specs)

    def add(self, specs: list[ArraySpec]) -> None:
        for s in specs:
            if s.name in self.specs:
                raise ValueError(f"state array {s.name!r} declared twice")
            self.specs[s.name] = s
            self.arrays[s.name] = self._alloc(s)

    def _shape(self, s: ArraySpec) -> tuple:
        if s.kind == ROW:
            return (self.cap, *s.tail)
        return tuple(s.tail)

    def _alloc(self, s: ArraySpec) -> np.ndarray:
        return np.full(self._shape(s), s.fill, dtype=s.dtype)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    def stored(self, kind: str | None = None) -> list[ArraySpec]:
        """The stored specs (of one kind), in name order: a checkpoint's layout."""
        return [s for n, s in sorted(self.specs.items()) if s.stored and (kind is None or s.kind == kind)]

    def ensure(self, n_rows: int) -> None:
        """Grow so that rows ``< n_rows`` exist."""
        if n_rows <= self.cap:
            return
        old = self.cap
        while self.cap < n_rows:
            self.cap *= 2
        for s in self.specs.values():
            if s.kind == GLOBAL:
                continue
            new = self._alloc(s)
            new[:old] = self.arrays[s.name]
            self.arrays[s.name] = new

    def clear_rows(self, rows: np.ndarray) -> None:
        """Reset rows to their fill values (a row given back to the free list)."""
        for s in self.specs.values():
            if s.kind == ROW:
                self.arrays[s.name][rows] = s.fill


class IdMap:
    """External string id <-> dense row. New ids take freed rows first (lowest first),
    then rows in order of first appearance; ``remove`` frees a row (user expiry)."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.ids: list = []  # row -> id, None for a free row
        self.free: list[int] = []  # freed rows, a min-heap (the lowest is reused first)
        self.created = 0  # ids first met by ``rows`` (not re-added from a checkpoint)
        self.new_rows: list[int] = []  # rows the last call of ``rows`` created

    def __len__(self) -> int:
        """Rows in use or freed: the extent the arrays must cover."""
        return len(self.ids)

    def live(self) -> int:
        return len(self.index)

    def get(self, ext: str) -> int:
        return self.index.get(ext, -1)

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, int]:
        """Rows of ``ids``, creating rows for new ids in order; returns (rows, first new row)."""
        first_new = len(self.ids)
        self.new_rows = []
        out = np.fromiter(map(self.index.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))
        missing = np.flatnonzero(out < 0)
        if len(missing):
            index = self.index
            for j in missing:
                x = ids[j]
                r = index.get(x)
                if r is None:
                    r = self.add(x)
                    self.created += 1
                    self.new_rows.append(r)
                out[j] = r
        return out, first_new

    def add(self, ext: str) -> int:
        r = self.index.get(ext)
        if r is None:
            if self.free:
                r = heapq.heappop(self.free)
                self.ids[r] = ext
            else:
                r = len(self.ids)
                self.ids.append(ext)
            self.index[ext] = r
        return r

    def remove(self, ext: str) -> int:
        r = self.index.pop(ext)
        self.ids[r] = None
        heapq.heappush(self.free, r)
        return r


class PairSet:
    """Growable (user row, item row) set, see ``kernels.pairset``."""

    def __init__(self, capacity: int = 4096):
        self.table = pairset_new(capacity)
        self.count = np.zeros(1, dtype=np.int64)

    def reserve(self, incoming: int) -> None:
        self.table = pairset_grow(self.table, self.count, incoming)


class History:
    """The int32 pool behind per-user histories (``kernels.history``); the per-user
    offset, length and capacity are the user side's arrays ``hist.off/len/cap``."""

    def __init__(self, capacity: int = 1 << 16):
        self.pool = np.zeros(capacity, dtype=np.int32)
        self.used = 0

    def reserve(self, users: np.ndarray, counts: np.ndarray, arrays: StateArrays) -> None:
        """Make room for ``counts[t]`` more items of ``users[t]`` (distinct user rows)."""
        off, length, cap = arrays["hist.off"], arrays["hist.len"], arrays["hist.cap"]
        new_cap = history_relocations(users, length[users] + counts, cap)
        need = int(new_cap.sum())
        if need == 0:
            return
        if self.used + need > len(self.pool):
            live = int(length.sum())
            if self.used > 2 * live + need:  # mostly holes: compact first
                n_users = len(length)
                new = np.zeros(max(len(self.pool), 2 * (live + need)), dtype=np.int32)
                self.used = int(history_compact(n_users, off, length, cap, self.pool, new))
                self.pool = new
                new_cap = history_relocations(users, length[users] + counts, cap)
                need = int(new_cap.sum())
            size = len(self.pool)
            while self.used + need > size:
                size *= 2
            if size > len(self.pool):
                grown = np.zeros(size, dtype=np.int32)
                grown[: self.used] = self.pool[: self.used]
                self.pool = grown
        self.used = int(history_move(users, new_cap, off, length, cap, self.pool, self.used))

    def items(self, u: int, arrays: StateArrays) -> np.ndarray:
        o, n = int(arrays["hist.off"][u]), int(arrays["hist.len"][u])
        return self.pool[o : o + n].copy()


class NeighborPool:
    """Per-item neighbour counts: a dense rows x rows matrix while the catalog is small
    (exact, and the fastest to scan), bounded neighbour lists in a pool beyond
    ``dense_limit`` rows (``kernels.neighbors``; each row's offset, length and capacity are
    the item side's arrays ``<name>.off/nn/cap``). The switch happens once, when the item
    capacity outgrows the limit: each dense row keeps its ``cap_max`` heaviest entries."""

    def __init__(self, name: str, cap_max: int, dense_limit: int = 0, capacity: int = 1 << 14):
        self.name = name
        self.cap_max = cap_max
        self.dense_limit = dense_limit
        self.dense: np.ndarray = np.zeros((1, 1), dtype=np.float32)  # (1, 1): not dense
        self.pj = np.zeros(capacity, dtype=np.int32)
        self.pc = np.zeros(capacity, dtype=np.float32)
        self.used = np.zeros(1, dtype=np.int64)
        # the kernels' log of increments, when the item side is shared (``items``)
        self.lg_i = np.zeros(0, dtype=np.int32)
        self.lg_j = np.zeros(0, dtype=np.int32)
        self.lg_w = np.zeros(0, dtype=np.float64)
        self.lg_n = np.zeros(1, dtype=np.int64)

    def reserve_log(self, entries: int) -> None:
        if len(self.lg_i) < int(self.lg_n[0]) + entries:
            k = int(self.lg_n[0])
            size = max(1024, 2 * (k + entries))
            for name, dt in (("lg_i", np.int32), ("lg_j", np.int32), ("lg_w", np.float64)):
                new = np.zeros(size, dtype=dt)
                new[:k] = getattr(self, name)[:k]
                setattr(self, name, new)

    @property
    def is_dense(self) -> bool:
        return self.dense.shape[0] > 1

    def fit(self, arrays: StateArrays, n_rows: int) -> None:
        """Follow the item capacity: grow the dense matrix, or leave it for lists."""
        cap = arrays.cap
        if cap <= self.dense_limit:
            if self.dense.shape[0] < cap:
                old = self.dense
                self.dense = np.zeros((cap, cap), dtype=np.float32)
                if old.shape[0] > 1:
                    self.dense[: old.shape[0], : old.shape[1]] = old
            return
        if self.is_dense:
            old, self.dense = self.dense, np.zeros((1, 1), dtype=np.float32)
            for i in range(min(n_rows, old.shape[0])):
                js = np.flatnonzero(old[i])
                if len(js) > self.cap_max:  # the heaviest, ties to the lower row
                    js = np.sort(js[np.argsort(-old[i, js], kind="stable")[: self.cap_max]])
                self.set_row(arrays, n_rows, i, js.astype(np.int32), old[i, js])

    @staticmethod
    def specs(name: str) -> list[ArraySpec]:
        return [ArraySpec(f"{name}.off", ROW, (), "int64", stored=False),
                ArraySpec(f"{name}.nn", ROW, (), "int32", stored=False),
                ArraySpec(f"{name}.cap", ROW, (), "int32", stored=False)]

    def reserve(self, arrays: StateArrays, n_rows: int, free: int) -> None:
        """At least ``free`` unused entries at the end of the pool: compact first when
        most of the pool is garbage (rows that moved when they grew), else grow."""
        used = int(self.used[0])
        if used + free <= len(self.pj):
            return
        cap = arrays[f"{self.name}.cap"]
        live = int(cap[:n_rows].sum())
        size = max(len(self.pj), 1024)
        while size < live + free or (size < 2 * live and live + free > size // 2):
            size *= 2
        new_j = np.zeros(size, dtype=np.int32)
        new_c = np.zeros(size, dtype=np.float32)
        self.used[0] = nb_compact(n_rows, arrays[f"{self.name}.off"], arrays[f"{self.name}.nn"], cap, self.pj, self.pc,
                                  new_j, new_c)
        self.pj, self.pc = new_j, new_c

    def row(self, arrays: StateArrays, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self.is_dense:
            js = np.flatnonzero(self.dense[i]).astype(np.int32)
            return js, self.dense[i, js]
        o, n = int(arrays[f"{self.name}.off"][i]), int(arrays[f"{self.name}.nn"][i])
        return self.pj[o : o + n].copy(), self.pc[o : o + n].copy()

    def rows(self, arrays: StateArrays, rows: np.ndarray, n_rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``row`` of many rows at once: (lengths, neighbours, counts), the rows' entries
        concatenated in order (each row's as ``row`` gives them); ``n_rows``: the rows in use."""
        rows = np.asarray(rows, dtype=np.int64)
        if self.is_dense:
            sub = self.dense[:n_rows, :n_rows][rows]
            r, js = np.nonzero(sub)
            return np.bincount(r, minlength=len(rows)), js.astype(np.int32), sub[r, js]
        off = arrays[f"{self.name}.off"][rows]
        nn = arrays[f"{self.name}.nn"][rows].astype(np.int64)
        total = int(nn.sum())
        starts = np.repeat(off - np.cumsum(nn) + nn, nn)  # each entry's row offset, minus entries before it
        idx = starts + np.arange(total)
        return nn, self.pj[idx], self.pc[idx]

    def set_row(self, arrays: StateArrays, n_rows: int, i: int, js: np.ndarray, cs: np.ndarray) -> None:
        """Make row i exactly ``(js, cs)`` (a restore)."""
        if self.is_dense:
            self.dense[i, :] = 0
            self.dense[i, js] = cs
            return
        m = len(js)
        off, n, cap = arrays[f"{self.name}.off"], arrays[f"{self.name}.nn"], arrays[f"{self.name}.cap"]
        if m > cap[i]:
            c = FIRST_CAP
            while c < m:
                c *= 2
            c = min(max(c, m), max(self.cap_max, m))
            self.reserve(arrays, n_rows, c)
            o = int(self.used[0])
            off[i] = o
            cap[i] = c
            self.used[0] = o + c
        o = int(off[i])
        self.pj[o : o + m] = js
        self.pc[o : o + m] = cs
        n[i] = m


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
        """Rebuild the popularity order (after a restore)."""
        a = self.arrays
        pop_resort(a["pop"], a["plin"], a["pop_meta"], self.n, a["pop.order"], a["pop.rank"])

    def kernel(self) -> ItemK:
        a = self.arrays
        return ItemK(a["n"], a["active"], a["pop"], a["plin"], a["pop_meta"], a["pop.order"], a["pop.rank"], a["iev"],
                     a["dirty"], a["key"], a["seed"], self.plog_i, self.plog_x, self.plog_n)
