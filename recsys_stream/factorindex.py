"""A factor model's retrieval index, kept up to date with its item side (issue #9): when
``ann.IVFIndex`` is built, tuned and grown for a model, and the structure its kernels
read (``kernels.annk``)."""

from __future__ import annotations

import time

import numpy as np

from .ann import IVFIndex

ANN_MODES = ("auto", "on", "off")
TUNE_USERS = 256  # users whose vectors tune the probe count at a build


class FactorIndex:
    """The index a factor model ranks with, over one item side (``ItemState.derived``).

    ``mode``: ``"off"`` (the exact scan always), ``"on"`` (the index from the first item
    on) or ``"auto"`` (the index once the catalog has ``min_items`` items: below that the
    exact scan is about as fast and exact). The kernels keep it current and say when it
    must be built or grown (``kernels.annk``: ``ann_ready``, ``ann_refresh``); ``grow``
    does it. A build happens at the first learned event at which the catalog has
    ``want_at`` items (``min_items``, or twice the rows of the last build), or when the
    index's health asks for one (rows outgrew ``M``, rows drifted out of their lists,
    ``IVFIndex.needs_rebuild``); its probe count is tuned for recall@10 >= ``recall`` on
    the vectors of up to ``TUNE_USERS`` of the model's users (``IVFIndex.tune``). The
    kernels re-copy a row learned as a sampled negative at every ``lag``-th update of the
    row, so a copy is at most ``lag - 1`` updates behind (``kernels.annk``). Rows
    changed outside the model's calls (other workers' updates) are re-copied when they
    arrive (``changed``).

    Lists with the index are exact among the candidates (scores are the current ones);
    which rows are candidates depends on the index's history, a function of the events in
    order: replays are deterministic, whatever the batches. A restore drops the index
    (``ItemState.resort``) and the next learned event builds it from the restored rows,
    so lists after a restore can differ from the uninterrupted run's in their candidates;
    the state of a model whose learning does not read its lists (``implicit``) does not.
    Until that event, reads rank by the exact scan. An item becomes a candidate at its
    first learned event (or the next build).
    """

    def __init__(self, prefix: str, dim: int, mode: str = "auto", min_items: int = 20_000, recall: float = 0.99,
                 lag: int = 8, seed: int = 0):
        if mode not in ANN_MODES:
            raise ValueError(f"ann must be one of {ANN_MODES}, got {mode!r}")
        if lag < 1:
            raise ValueError(f"ann_lag must be >= 1, got {lag}")
        self.prefix, self.dim, self.mode, self.lag = prefix, int(dim), mode, int(lag)
        self.min_items, self.recall, self.seed = int(min_items), float(recall), int(seed)
        self.ix: IVFIndex | None = None
        self.builds = 0
        self.build_s = 0.0
        self.last_reason = ""
        self._x = np.zeros(dim + 2, dtype=np.float32)

    @classmethod
    def of(cls, items, prefix: str, dim: int, **settings) -> "FactorIndex":
        key = f"ann.{prefix}"
        fi = items.derived.get(key)
        if fi is None:
            fi = items.derived[key] = cls(prefix, dim, **settings)
        return fi

    def _arrays(self, items):
        a = items.arrays
        return a[f"{self.prefix}.Q"], a[f"{self.prefix}.b"]

    @property
    def want_at(self) -> int:
        """The catalog size at which the next build is due (-1: never)."""
        if self.ix is not None:
            return 2 * max(self.ix.built_n, 1)
        if self.mode == "off":
            return -1
        return 1 if self.mode == "on" else max(self.min_items, 1)

    def _health(self) -> str | None:
        st = self.ix.stats
        if self.ix.M > 0 and st[0] >= 1000 and st[3] * 100 > st[0]:
            return f"{st[3]} of {st[0]} updated rows above M"
        if st[4] >= 50 and st[1] * 5 > st[4]:
            return f"{st[1]} of {st[4]} checked rows misplaced"
        return None

    def _room(self) -> int:
        from .kernels.annk import ann_room

        return int(ann_room(self.per_event, int(self.ix.stats[5])))

    def ready(self, items, per_event: int) -> bool:
        """``kernels.annk.ann_ready`` of the index as it is: False when the next learned
        event would stop for it."""
        self.per_event = int(per_event)
        want = self.want_at
        if want >= 0 and items.n >= want:
            return False
        if self.ix is None:
            return True
        return self._health() is None and len(self.ix.slot_row) - int(self.ix.used[0]) >= self._room()

    def grow(self, items, users, per_event: int) -> None:
        """After a kernel asked (``NEED_ROOM``): build the index if due, else make room in its
        arena; nothing when it was something else that needed room."""
        self.per_event = int(per_event)
        n = items.n
        want = self.want_at
        if want >= 0 and n >= want:
            self._build(items, users, "first use" if self.ix is None else f"catalog {self.ix.built_n} -> {n}")
            return
        if self.ix is None:
            return
        why = self._health()
        if why:
            self._build(items, users, why)
        elif len(self.ix.slot_row) - int(self.ix.used[0]) < self._room():
            why = self.ix.needs_rebuild()  # imbalance: a good moment to re-cluster
            if why:
                self._build(items, users, why)
            else:
                self.ix._repack(extra=4 * self._room())

    def _build(self, items, users, reason: str) -> None:
        Q, b = self._arrays(items)
        n = items.n
        t0 = time.perf_counter()
        ix = IVFIndex(self.dim, seed=self.seed).build(Q, b, n)
        P, mine = self._tune_users(users)
        if len(P) and n > 10:
            ix.tune(P, Q, b, n, k=10, target=self.recall, exclude=mine)
        self.ix = ix
        if len(ix.slot_row) - int(ix.used[0]) < self._room():
            ix._repack(extra=4 * self._room())
        self.builds += 1
        self.build_s += time.perf_counter() - t0
        self.last_reason = reason

    def _tune_users(self, users) -> tuple[np.ndarray, list]:
        """Up to ``TUNE_USERS`` learned users' vectors and items (the queries they make)."""
        if users is None:
            return np.zeros((0, self.dim), dtype=np.float32), []
        a = users.arrays
        cu = a[f"{self.prefix}.cu"][: len(users)]
        rows = np.flatnonzero(cu > 0)
        if len(rows) > TUNE_USERS:
            rows = np.sort(np.random.default_rng(self.seed).choice(rows, TUNE_USERS, replace=False))
        P = np.ascontiguousarray(a[f"{self.prefix}.P"][rows], dtype=np.float32)
        return P, [users.items_of(int(r)) for r in rows]

    def kernel(self, items, per_event: int):
        """The structure a call's steps read (``kernels.annk.AnnK``); ``per_event``: the most
        item rows one event changes."""
        from .kernels.annk import AnnK

        self.per_event = int(per_event)
        ix = self.ix
        if ix is None:
            z = np.zeros(1, dtype=np.int64)
            f = np.zeros(1, np.float32)
            return AnnK(0, 0.0, 0, 0, True, 0, self.lag, self.want_at, self.per_event, np.zeros((1, 1), np.float32), f,
                        z, z, z, z, np.zeros(1, np.int32), np.zeros((1, self.dim), np.int8), f, f,
                        np.zeros(1, np.int32), z, np.zeros(7, np.int64), self._x, f)
        ix._ensure_rows(items.arrays.cap)
        return AnnK(1, float(ix.M), int(ix.nprobe), int(ix.cand_for(10)), ix.quant, ix.check_every, self.lag,
                    self.want_at, self.per_event, ix.centT, ix.cn, ix.lstart, ix.llen, ix.lcap, ix.used, ix.slot_row, ix.slot_q,
                    ix.slot_scale, ix.slot_bias, ix.row_list, ix.row_slot, ix.stats, self._x,
                    np.zeros(ix.nlist, np.float32))

    def changed(self, items, rows) -> None:
        """Rows changed outside the model's calls (other workers' updates, between calls)."""
        if self.ix is None:
            return
        Q, b = self._arrays(items)
        rows = np.asarray(rows, dtype=np.int64)
        self.ix.update(Q, b, rows[rows < items.n])

    def info(self) -> dict:
        ix = self.ix
        return {"on": ix is not None, "builds": self.builds, "build_s": round(self.build_s, 3),
                "rows": len(ix) if ix else 0, "nlist": ix.nlist if ix else 0, "nprobe": ix.nprobe if ix else 0,
                "bytes": ix.memory_bytes() if ix else 0, "stale_rows": int(ix.stats[6]) if ix else 0,
                "last_build": self.last_reason}
