"""Keyed state of a shard: id maps and named, growable numpy arrays.

Every array a model or the shard keeps is declared with an ``ArraySpec`` saying whether
its rows are users, items, items x items, or global. ``StateArrays`` grows them together
(capacity doubling, new rows zero- or fill-initialised), and the same declarations drive
checkpoints and digests: nothing is stored that is not declared.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import repeat

import numpy as np

from .kernels.history import history_compact, history_move, history_relocations
from .kernels.pairset import pairset_grow, pairset_new

USER, ITEM, ITEM2, GLOBAL = "user", "item", "item2", "global"


@dataclass(frozen=True)
class ArraySpec:
    name: str
    kind: str  # USER, ITEM, ITEM2 (rows and columns are items) or GLOBAL
    tail: tuple = ()  # trailing shape (for USER/ITEM) or the whole shape (GLOBAL)
    dtype: str = "float32"
    fill: float = 0


class StateArrays:
    """Named arrays whose leading dimension follows the user or item capacity."""

    def __init__(self, specs: list[ArraySpec], cap_users: int = 1024, cap_items: int = 1024):
        self.specs = {s.name: s for s in specs}
        self.cap_users = cap_users
        self.cap_items = cap_items
        self.arrays: dict[str, np.ndarray] = {}
        for s in specs:
            self.arrays[s.name] = self._alloc(s)

    def add(self, specs: list[ArraySpec]) -> None:
        for s in specs:
            if s.name in self.specs:
                raise ValueError(f"state array {s.name!r} declared twice")
            self.specs[s.name] = s
            self.arrays[s.name] = self._alloc(s)

    def _shape(self, s: ArraySpec) -> tuple:
        if s.kind == USER:
            return (self.cap_users, *s.tail)
        if s.kind == ITEM:
            return (self.cap_items, *s.tail)
        if s.kind == ITEM2:
            return (self.cap_items, self.cap_items)
        return tuple(s.tail)

    def _alloc(self, s: ArraySpec) -> np.ndarray:
        return np.full(self._shape(s), s.fill, dtype=s.dtype)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        self.arrays[name] = value

    def ensure(self, n_users: int, n_items: int) -> None:
        """Grow so that rows ``< n_users`` / ``< n_items`` exist."""
        if n_users > self.cap_users:
            old = self.cap_users
            while self.cap_users < n_users:
                self.cap_users *= 2
            for s in self.specs.values():
                if s.kind == USER:
                    self.arrays[s.name] = self._grow(s, self.arrays[s.name], old)
        if n_items > self.cap_items:
            old = self.cap_items
            while self.cap_items < n_items:
                self.cap_items *= 2
            for s in self.specs.values():
                if s.kind in (ITEM, ITEM2):
                    self.arrays[s.name] = self._grow(s, self.arrays[s.name], old)

    def _grow(self, s: ArraySpec, arr: np.ndarray, old: int) -> np.ndarray:
        new = self._alloc(s)
        if s.kind == ITEM2:
            new[:old, :old] = arr
        else:
            new[:old] = arr
        return new


class IdMap:
    """External string id <-> dense row. New ids take freed rows first (lowest first),
    then rows in order of first appearance; ``remove`` frees a row (user expiry)."""

    def __init__(self):
        self.index: dict[str, int] = {}
        self.ids: list = []  # row -> id, None for a free row
        self.free: list[int] = []  # freed rows, kept sorted descending (pop gives the lowest)
        self.created = 0  # ids first met by ``rows`` (not re-added from a checkpoint)

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
                out[j] = r
        return out, first_new

    def add(self, ext: str) -> int:
        r = self.index.get(ext)
        if r is None:
            if self.free:
                r = self.free.pop()
                self.ids[r] = ext
            else:
                r = len(self.ids)
                self.ids.append(ext)
            self.index[ext] = r
        return r

    def remove(self, ext: str) -> int:
        r = self.index.pop(ext)
        self.ids[r] = None
        self.free.append(r)
        self.free.sort(reverse=True)
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
    offset, length and capacity are the shard's USER arrays ``hist.off/len/cap``."""

    def __init__(self, capacity: int = 1 << 16):
        self.pool = np.zeros(capacity, dtype=np.int32)
        self.used = 0

    def reserve(self, users: np.ndarray, counts: np.ndarray, arrays: "StateArrays") -> None:
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

    def items(self, u: int, arrays: "StateArrays") -> np.ndarray:
        o, n = int(arrays["hist.off"][u]), int(arrays["hist.len"][u])
        return self.pool[o : o + n].copy()
