"""Approximate retrieval for the factor models (issue #9): an inverted-file index over the
item factors (``kernels.ivf``), its arrays and the decisions around them (sizes, growth,
the probe count, when to re-cluster).

The index is derived state: everything in it is a function of the item factors ``Q``,
the biases ``b`` and the settings (seed included), so after a restore it is rebuilt from
them, never checkpointed. It does not hold ``Q``/``b`` (a model's arrays are reallocated
as the catalog grows): every call is given the current ones.

    ix = IVFIndex(dim=32).build(Q, b, n)
    ix.tune(P_sample, Q, b, n)                   # the probe count for recall@10 >= 0.95
    idx, sc, c = ix.search(p, Q, b, n, excl, active, k)
    ix.update(Q, b, touched_rows)                # the rows changed since the last refresh
    if ix.needs_rebuild(): ix.build(Q, b, n)

Staleness. A query picks candidates by the copies as of each row's last ``update`` and
re-scores them with the current ``Q``/``b``, so a returned score is always exact and
the ranking among the candidates is the exact one. A caller refreshing every N events
(``update`` with the rows those events changed) gets candidates chosen by vectors at
most N events old: an item whose score rose since its copy was taken can be missed for
at most N events, and an item is never returned with a stale score. Centroids are as
old as the last build; rows move between lists as they drift (``kernels.ivf``).

The models do not refresh it by batches: ``factorindex.FactorIndex`` hands the index to their
kernels, which re-copy the row an event learns as a positive at once and a row changed
as a sampled negative at every ``lag``-th update of it (``kernels.annk``), so their
rankings read copies at most ``lag - 1`` updates behind the rows.
"""

from __future__ import annotations

import math

import numpy as np

from .kernels.ivf import (augment, centroid_norms, fill_lists, ivf_remove, ivf_search, ivf_update, lloyd_update,
                          repack)
from .kernels.topk import score_factors, topk_masked

METRICS = ("aug", "ip")
STORAGE = {"int8": np.int8, "float32": np.float32}


def default_nlist(n: int) -> int:
    """About ``2 sqrt(n)`` lists (1 for tiny catalogs)."""
    return max(1, min(n, int(round(2.0 * math.sqrt(max(n, 1))))))


CHUNK_ROWS = 2048  # rows scored against every centroid at once (the scores stay in cache)


def nearest_centroids(X: np.ndarray, centT: np.ndarray, cn: np.ndarray, out: np.ndarray) -> None:
    """``out[i]`` = the centroid nearest to ``X[i]`` (``argmax X[i] . c - cn[c]``, ``cn = |c|^2
    / 2``, ties to the lower centroid, as ``kernels.ivf.nearest_centroid``), by matrix
    products in chunks of rows (BLAS, outside the GIL: a build's main cost)."""
    for s in range(0, len(X), CHUNK_ROWS):
        sc = X[s : s + CHUNK_ROWS] @ centT
        sc -= cn
        out[s : s + CHUNK_ROWS] = sc.argmax(axis=1)


def kmeans(X: np.ndarray, cent: np.ndarray, iters: int, seed: int) -> np.ndarray:
    """Lloyd's iterations on the rows of ``X`` from the initial centroids ``cent`` (updated
    in place), stopping early when no row changes centroid; an emptied centroid restarts
    at a row drawn at random (``seed``). Returns the last assignment."""
    m = len(X)
    assign = np.full(m, -1, dtype=np.int64)
    new = np.empty(m, dtype=np.int64)
    cn = np.empty(cent.shape[0], dtype=np.float32)
    state = np.uint64((int(seed) * 0x9E3779B97F4A7C15 + 1) % (1 << 64))
    for _ in range(iters):
        centroid_norms(cent, cn)
        nearest_centroids(X, np.ascontiguousarray(cent.T), cn, new)
        changed = int(np.count_nonzero(new != assign))
        assign[:] = new
        state = np.uint64(lloyd_update(X, assign, cent, state))  # numba hands back a Python int
        if changed == 0:
            break
    return assign


class IVFIndex:
    """Inverted-file index over item rows (see the module docstring and ``kernels.ivf``).

    ``nlist``: lists (default ``default_nlist(n)`` at each build); ``nprobe``: lists a
    query scans (default ``max(8, nlist // 64)``; ``tune`` measures it); ``cand``:
    candidates re-scored exactly (default ``max(2 k, k + 10)``); ``metric``: ``"aug"``
    (the max-inner-product reduction) or ``"ip"``; ``storage``: ``"int8"`` (per-row scale)
    or ``"float32"`` copies; ``check_every``: of every this many updated rows one is
    compared with every centroid and moved if misplaced (``kernels.ivf.ivf_update``);
    ``iters``/``sample``: Lloyd iterations on a sample of ``sample`` rows per list (at
    most ``max_sample`` rows); ``headroom``: ``M`` is the largest norm at build times
    this; ``slack``: spare capacity of a list at build (that fraction of its length, plus
    4 slots).
    """

    def __init__(self, dim: int, nlist: int | None = None, nprobe: int | None = None, cand: int | None = None,
                 metric: str = "aug", storage: str = "int8", check_every: int = 32, iters: int = 10, sample: int = 64,
                 max_sample: int = 262_144, headroom: float = 1.1, slack: float = 0.25, seed: int = 0):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if storage not in STORAGE:
            raise ValueError(f"storage must be one of {tuple(STORAGE)}, got {storage!r}")
        if dim < 1 or check_every < 0 or iters < 0 or sample < 1 or headroom < 1.0 or slack < 0.0:
            raise ValueError("need dim >= 1, check_every >= 0, iters >= 0, sample >= 1, headroom >= 1, slack >= 0")
        self.dim = int(dim)
        self.nlist_setting = nlist
        self.nprobe_setting = nprobe
        self.cand_setting = cand
        self.metric = metric
        self.storage = storage
        self.quant = storage == "int8"
        self.check_every = int(check_every)
        self.iters = int(iters)
        self.sample = int(sample)
        self.max_sample = int(max_sample)
        self.headroom = float(headroom)
        self.slack = float(slack)
        self.seed = int(seed)
        # rows updated, moves, adds, rows above M, rows checked, the largest list capacity,
        # rows left stale for want of room (``kernels.annk.ann_refresh``)
        self.stats = np.zeros(7, dtype=np.int64)
        self.built_n = 0
        self.built_imbalance = 1.0
        self.M = 0.0
        self._alloc_lists(1)
        self._alloc_arena(0)
        self.row_list = np.full(0, -1, dtype=np.int32)
        self.row_slot = np.full(0, -1, dtype=np.int64)

    # -- sizes ----------------------------------------------------------------------

    @property
    def nlist(self) -> int:
        return self.cent.shape[0]

    @property
    def nprobe(self) -> int:
        p = self.nprobe_setting if self.nprobe_setting is not None else max(8, self.nlist // 64)
        return max(1, min(p, self.nlist))

    def cand_for(self, k: int) -> int:
        return self.cand_setting if self.cand_setting is not None else max(2 * k, k + 10)

    def __len__(self) -> int:
        return int(self.llen.sum())

    def _alloc_lists(self, nlist: int) -> None:
        D = self.dim + 2
        self.cent = np.zeros((nlist, D), dtype=np.float32)
        self.centT = np.zeros((D, nlist), dtype=np.float32)
        self.cn = np.zeros(nlist, dtype=np.float32)
        self.lstart = np.zeros(nlist, dtype=np.int64)
        self.llen = np.zeros(nlist, dtype=np.int64)
        self.lcap = np.zeros(nlist, dtype=np.int64)

    def _alloc_arena(self, slots: int) -> None:
        self.slot_row = np.full(slots, -1, dtype=np.int32)
        self.slot_q = np.zeros((slots, self.dim), dtype=STORAGE[self.storage])
        self.slot_scale = np.zeros(slots, dtype=np.float32)
        self.slot_bias = np.zeros(slots, dtype=np.float32)
        self.used = np.zeros(1, dtype=np.int64)

    def _ensure_rows(self, n: int) -> None:
        if len(self.row_list) < n:
            cap = max(n, 2 * len(self.row_list), 1024)
            rl = np.full(cap, -1, dtype=np.int32)
            rs = np.full(cap, -1, dtype=np.int64)
            rl[: len(self.row_list)] = self.row_list
            rs[: len(self.row_slot)] = self.row_slot
            self.row_list, self.row_slot = rl, rs

    def _caps(self, lens: np.ndarray) -> np.ndarray:
        return (lens + np.floor(lens * self.slack).astype(np.int64) + 4).astype(np.int64)

    def _repack(self, extra: int = 0) -> None:
        """Compact the arena (every list gets fresh slack) with room for ``extra`` more
        slots, or a quarter of the lists' capacity, for lists that outgrow theirs."""
        newcap = np.maximum(self._caps(self.llen), self.lcap // 2)
        total = int(newcap.sum())
        slots = total + max(extra, total // 4 + 64)
        old = (self.slot_row, self.slot_q, self.slot_scale, self.slot_bias)
        self._alloc_arena(slots)
        self.used[0] = repack(self.lstart, self.llen, self.lcap, newcap, *old, self.slot_row, self.slot_q,
                              self.slot_scale, self.slot_bias, self.row_slot)
        self.stats[5] = int(self.lcap.max()) if len(self.lcap) else 0

    # -- build ------------------------------------------------------------------------

    def build(self, Q: np.ndarray, b: np.ndarray, n: int, rows: np.ndarray | None = None) -> "IVFIndex":
        """(Re)build over item rows ``0 .. n-1`` (or ``rows``): k-means on a sample, every
        row into the list of its nearest centroid. Deterministic for the seed."""
        if Q.ndim != 2 or Q.shape[1] != self.dim:
            raise ValueError(f"Q must have {self.dim} columns, got shape {Q.shape}")
        rows = np.arange(n, dtype=np.int64) if rows is None else np.ascontiguousarray(rows, dtype=np.int64)
        m = len(rows)
        nlist = self.nlist_setting if self.nlist_setting is not None else default_nlist(m)
        nlist = max(1, min(nlist, max(m, 1)))
        rng = np.random.default_rng(self.seed)
        X = np.empty((m, self.dim + 2), dtype=np.float32)
        if self.metric == "aug" and m:
            augment(Q, b, rows, 0.0, X)
            nn = np.einsum("ij,ij->i", X[:, :-1].astype(np.float64), X[:, :-1].astype(np.float64))
            top = float(math.sqrt(nn.max()))
            self.M = top * self.headroom if top > 0 else 1.0
        else:
            self.M = 0.0
        augment(Q, b, rows, self.M, X)
        self._alloc_lists(nlist)
        ns = min(m, max(nlist, self.sample * nlist), self.max_sample)
        sample = X[np.sort(rng.choice(m, ns, replace=False))] if ns < m else X
        if m:
            self.cent[:] = sample[rng.choice(len(sample), nlist, replace=False)]
            kmeans(sample, self.cent, self.iters, self.seed)
        self.centT[:] = self.cent.T
        centroid_norms(self.cent, self.cn)
        assign = np.empty(m, dtype=np.int64)
        nearest_centroids(X, self.centT, self.cn, assign)
        del X
        lens = np.bincount(assign, minlength=nlist).astype(np.int64)
        self.lcap[:] = self._caps(lens)
        self.lstart[:] = np.concatenate(([0], np.cumsum(self.lcap)[:-1]))
        total = int(self.lcap.sum())
        self._alloc_arena(total + total // 4 + 64)
        self.used[0] = total
        self.llen[:] = 0
        size = max(int(rows.max()) + 1 if m else 0, 1024)
        self.row_list = np.full(size, -1, dtype=np.int32)
        self.row_slot = np.full(size, -1, dtype=np.int64)
        fill_lists(rows, assign, Q, b, self.lstart, self.llen, self.slot_row, self.slot_q, self.slot_scale,
                   self.slot_bias, self.row_list, self.row_slot, self.quant)
        self.built_n = m
        self.built_imbalance = self.imbalance()
        self.stats[:] = 0
        self.stats[5] = int(self.lcap.max()) if nlist else 0
        return self

    def tune(self, P: np.ndarray, Q: np.ndarray, b: np.ndarray, n: int, k: int = 10, target: float = 0.95,
             exclude: list | None = None) -> int:
        """Set ``nprobe`` to the fewest lists that give recall@k >= ``target`` against the
        exact ranking for the queries ``P`` (a sample of the model's users; ``exclude[t]``:
        the rows query t must not return, its user's items), with this index's ``cand``;
        returns it (``nlist`` if none short of it does). Costs one exact scan per query
        plus searches at about log2(nlist) probe counts."""
        P = np.ascontiguousarray(P, dtype=np.float32)
        excl = np.zeros(n, dtype=np.uint8)
        active = np.ones(n, dtype=np.uint8)
        scores = np.empty(n)
        none = np.zeros(0, dtype=np.int64)
        mine = [np.asarray(exclude[t] if exclude is not None else none, dtype=np.int64) for t in range(len(P))]
        mine = [m[m < n] for m in mine]
        truth = []
        idx, sc = np.empty(k, dtype=np.int64), np.empty(k)
        for p, m in zip(P, mine):
            score_factors(p, Q, b, n, scores)
            excl[m] = 1
            c = topk_masked(scores, n, excl, active, k, idx, sc)
            excl[m] = 0
            truth.append(set(idx[:c].tolist()))
        want = sum(len(t) for t in truth)

        def rec(nprobe: int) -> float:
            hits = 0
            for p, m, t in zip(P, mine, truth):
                excl[m] = 1
                got, _, c = self.search(p, Q, b, n, excl, active, k, nprobe=nprobe)
                excl[m] = 0
                hits += len(t & set(got[:c].tolist()))
            return hits / max(1, want)

        lo, hi = 0, 1  # rec(lo) < target (lo = 0: nothing), rec(hi) to be found
        while hi < self.nlist and rec(hi) < target:
            lo, hi = hi, min(2 * hi, self.nlist)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if rec(mid) >= target:
                hi = mid
            else:
                lo = mid
        self.nprobe_setting = hi
        return hi

    # -- changes ----------------------------------------------------------------------

    def update(self, Q: np.ndarray, b: np.ndarray, rows, check: bool = False) -> None:
        """Re-copy ``rows`` (changed since the last refresh; repeats are fine), checking
        every ``check_every``-th one's list (all of them with ``check``: rows known to
        have jumped, such as restored ones); rows not indexed yet are added."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if not len(rows):
            return
        self._ensure_rows(int(rows.max()) + 1)
        every = 1 if check else self.check_every
        t = 0
        while True:
            t = ivf_update(rows, t, Q, b, self.M, self.centT, self.cn, self.lstart, self.llen, self.lcap, self.used,
                           self.slot_row, self.slot_q, self.slot_scale, self.slot_bias, self.row_list, self.row_slot,
                           self.quant, every, self.stats)
            if t >= len(rows):
                return
            self._repack(extra=2 * int(self.lcap.max()) + len(rows) - t)

    add = update  # a new row is an update of a row the index does not have yet

    def remove(self, rows) -> int:
        """Take ``rows`` out (a retired item); returns how many were in."""
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        return int(ivf_remove(rows, self.lstart, self.llen, self.slot_row, self.slot_q, self.slot_scale,
                              self.slot_bias, self.row_list, self.row_slot))

    # -- queries ------------------------------------------------------------------------

    def search(self, p, Q, b, n_cat: int, excl, active, k: int, out_idx=None, out_sc=None, nprobe: int | None = None,
               cand: int | None = None):
        """Top-k of the indexed rows ``< n_cat`` that are active and not excluded, for
        query ``p`` (``kernels.ivf.ivf_search``); returns (out_idx, out_sc, count)."""
        if out_idx is None:
            out_idx = np.empty(k, dtype=np.int64)
            out_sc = np.empty(k, dtype=np.float64)
        c = ivf_search(p, Q, b, n_cat, excl, active, self.M, self.centT, self.cn, self.lstart, self.llen,
                       self.slot_row, self.slot_q, self.slot_scale, self.slot_bias,
                       self.nprobe if nprobe is None else nprobe, self.cand_for(k) if cand is None else cand, k,
                       out_idx, out_sc)
        return out_idx, out_sc, c

    # -- health ---------------------------------------------------------------------------

    def imbalance(self) -> float:
        """The expected share of the catalog a probe scans over that of equal lists,
        ``nlist * sum(len^2) / n^2`` (1 when all lists are equal)."""
        n = float(self.llen.sum())
        if n == 0:
            return 1.0
        return float(self.nlist * np.square(self.llen.astype(np.float64)).sum() / (n * n))

    def misplaced(self) -> float:
        """The share of checked rows that were not in their nearest list (since the build)."""
        return float(self.stats[1] / self.stats[4]) if self.stats[4] else 0.0

    def needs_rebuild(self) -> str | None:
        """Why a re-clustering is due, or None: the catalog doubled since the build (lists
        twice as long as planned), the lists' imbalance doubled, more than 1% of the
        updated rows outgrew ``M`` (``aug``), or more than a fifth of the checked rows
        were misplaced (rows drifted out of their lists, or the centroids no longer fit:
        a full reassignment on new centroids is due)."""
        n = len(self)
        if self.built_n and n >= 2 * self.built_n:
            return f"catalog grew from {self.built_n} to {n} rows"
        if not self.built_n and n >= 1024:
            return f"built empty, {n} rows since"
        if self.imbalance() > 2.0 * self.built_imbalance:
            return f"imbalance {self.imbalance():.2f} (at build {self.built_imbalance:.2f})"
        if self.metric == "aug" and self.stats[0] >= 1000 and self.stats[3] > 0.01 * self.stats[0]:
            return f"{self.stats[3]} of {self.stats[0]} updated rows above M"
        if self.stats[4] >= 50 and self.misplaced() > 0.2:
            return f"{self.stats[1]} of {self.stats[4]} checked rows misplaced"
        return None

    def memory_bytes(self) -> int:
        arrays = (self.cent, self.centT, self.cn, self.lstart, self.llen, self.lcap, self.slot_row, self.slot_q,
                  self.slot_scale, self.slot_bias, self.row_list,
                  self.row_slot)
        return int(sum(a.nbytes for a in arrays))

    def check(self) -> None:
        """Assert the invariants (tests): every indexed row is in exactly one list, at the
        slot ``row_slot`` says; lists do not overlap and lie in the arena's used part."""
        seen = {}
        spans = []
        for l in range(self.nlist):
            s0, n, cap = int(self.lstart[l]), int(self.llen[l]), int(self.lcap[l])
            assert 0 <= n <= cap and s0 + cap <= int(self.used[0]) <= len(self.slot_row), (l, s0, n, cap)
            spans.append((s0, s0 + cap))
            for s in range(s0, s0 + n):
                j = int(self.slot_row[s])
                assert j >= 0 and j not in seen, (l, s, j)
                seen[j] = l
                assert self.row_list[j] == l and self.row_slot[j] == s, (j, l, s)
        spans.sort()
        for (a0, a1), (b0, b1) in zip(spans, spans[1:]):
            assert a1 <= b0, "lists overlap"
        indexed = np.flatnonzero(self.row_list >= 0)
        assert set(indexed.tolist()) == set(seen), "row_list names rows no list holds"
