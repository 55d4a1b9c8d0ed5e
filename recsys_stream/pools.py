"""Pooled per-row structures of the state: the (user, item) seen set, per-user
histories in one int32 pool, and per-item neighbour counts (dense while the catalog is
small, bounded lists in a pool beyond), each driven by its kernels."""

from __future__ import annotations

import numpy as np

from .arrays import ROW, ArraySpec, StateArrays
from .kernels.history import history_compact, history_move, history_relocations
from .kernels.neighbors import FIRST_CAP, nb_compact, nb_heapify_rows
from .kernels.pairset import pairset_grow, pairset_new


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

    def set_rows(self, arrays: StateArrays, n_rows: int, rows: np.ndarray, m: np.ndarray, js: np.ndarray,
                 cs: np.ndarray) -> None:
        """Make each of the distinct rows ``rows[t]`` exactly the next ``m[t]`` entries of
        ``(js, cs)`` (a restore)."""
        rows = np.asarray(rows, dtype=np.int64)
        m = np.asarray(m, dtype=np.int64)
        starts = np.cumsum(m) - m
        if self.is_dense:
            for t, i in enumerate(rows.tolist()):
                self.dense[i, :] = 0
                self.dense[i, js[starts[t] : starts[t] + m[t]]] = cs[starts[t] : starts[t] + m[t]]
            return
        off, n, cap = arrays[f"{self.name}.off"], arrays[f"{self.name}.nn"], arrays[f"{self.name}.cap"]
        grow = np.flatnonzero(m > cap[rows])
        if len(grow):
            mg = m[grow]
            c = np.full(len(grow), FIRST_CAP, dtype=np.int64)
            while np.any(c < mg):
                c = np.where(c < mg, 2 * c, c)
            c = np.minimum(np.maximum(c, mg), np.maximum(self.cap_max, mg))
            total = int(c.sum())
            self.reserve(arrays, n_rows, total)
            o = int(self.used[0])
            off[rows[grow]] = o + np.cumsum(c) - c
            cap[rows[grow]] = c
            self.used[0] = o + total
        idx = np.repeat(off[rows] - starts, m) + np.arange(int(m.sum()))
        self.pj[idx] = js
        self.pc[idx] = cs
        n[rows] = m
        nb_heapify_rows(off, n, self.pj, self.pc, rows)

    def set_row(self, arrays: StateArrays, n_rows: int, i: int, js: np.ndarray, cs: np.ndarray) -> None:
        """Make row i exactly ``(js, cs)`` (``set_rows`` of one row)."""
        self.set_rows(arrays, n_rows, np.array([i]), np.array([len(js)]), js, cs)
