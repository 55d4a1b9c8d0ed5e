"""Named growable arrays and id maps: the building blocks of keyed state (``state``).

Every array a model or a shard keeps is declared with an ``ArraySpec`` saying whether its
rows are the side's rows (``ROW``) or it has one fixed shape (``GLOBAL``), and whether a
checkpoint stores it or it is derived, scratch or bookkeeping (``stored=False``). A
``StateArrays`` grows its arrays together (capacity doubling, new rows fill-initialised);
an ``IdMap`` maps external ids to dense rows.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from itertools import repeat

import numpy as np

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

    def lookup(self, ids) -> np.ndarray:
        """Rows of ``ids``, -1 for an id without one."""
        return np.fromiter(map(self.index.get, ids, repeat(-1)), dtype=np.int64, count=len(ids))

    def rows(self, ids: np.ndarray) -> tuple[np.ndarray, int]:
        """Rows of ``ids``, creating rows for new ids in order; returns (rows, first new row)."""
        first_new = len(self.ids)
        self.new_rows = []
        out = self.lookup(ids)
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
