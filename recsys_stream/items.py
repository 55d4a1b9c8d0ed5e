"""One logical item side per job: owners by bucket, replicas per worker, updates as arrays.

Every item row belongs to a bucket, ``hash(id) % n_buckets`` (``state.ItemIndex``); the
owner of a bucket is keyed state of the dataflow's item step and the only writer of the
bucket's authoritative values (``hub.OwnerStore``, one per process, holding the buckets its
workers own). User shards read and update a **replica** (``Replica``, one per worker
thread, shared by that worker's shards) in place, so a shard reads its own writes at once;
after each batch the replica's changes leave as one ``Update`` per bucket:

- arrays merged by addition ("add", ``ArraySpec.merge``): each changed row's difference
  from its ``base`` (its value after the last update sent or received);
- popularity ("log"): the kernels' log of increments, in order;
- co-occurrence counts: the log of ``(i, j, w)`` increments, in order;
- global arrays (a model's global mean, hashed weights by chunk): differences, each chunk
  owned by the bucket ``(crc32(name) + chunk) % n_buckets``.

An owner applies each update to its bucket once, then **forwards** it to every other
replica: in its process through memory (``Hub.forward``), to other processes through the
sync topic (``sync``). A replica applies a forwarded update to its values and its base
(so its own next differences leave it out) and replays its logs into its own popularity
and neighbour lists. Owners and replicas thus see the same updates, each exactly once, in
possibly different orders: counts agree exactly, floating-point values to rounding, and
bounded neighbour lists to the order in which newcomers were admitted. With one replica
in the job (one worker, one process) nothing is forwarded, and the owner's values equal
the replica's bit for bit (adding ``value - base`` to ``base`` gives ``value``, and the
logs replay the same increments in the same order), so runs stay deterministic.

Consistency: what a replica reads is its own writes plus everyone else's as of the last
update forwarded to it: another worker's change arrives one owner batch later in the same
process, and one sync interval plus the topic's latency later from another process. The
staleness is bounded (stale synchronous parallel, Ho et al. 2013; Monolith's parameter
sync, Liu et al. 2022, forwards touched rows the same way). Updates travel inside the
dataflow, so Bytewax's epochs make owners' and users' checkpoints consistent with the
input offsets: an update is applied by its owner exactly once, even across crashes.
"""

from __future__ import annotations

import time
import zlib
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from .kernels.updates import bucket_order, distinct_rows, replay_log_pop, replay_pairs
from .state import GLOBAL, ROW, ItemIndex, ItemState

CHUNK = 4096  # global arrays travel and are owned by chunks of this many entries


def global_bucket(name: str, chunk: int, n_buckets: int) -> int:
    return (zlib.crc32(name.encode()) + chunk) % n_buckets


@dataclass
class Update:
    """A replica's changes to the rows of one bucket, from one shard's batch."""

    bucket: int
    origin: str  # the replica that sent it (process and worker)
    seq: int  # the replica's update counter
    rows: np.ndarray  # int32 process rows (or, with ``ids``, codes into ``names``)
    add: dict  # array name -> differences, one row per ``rows``
    pop: tuple  # (rows, log increments) in kernel order
    pairs: dict  # pool -> (i, j, w) in kernel order
    glob: dict  # array name -> [(chunk, differences)]
    ids: bool = False  # row fields are codes into ``names``, the external ids (it crossed processes)
    catalog: list | None = None  # an owner's catalog operations [(row or code, active)] instead of changes
    # the values before and after, by array name (rows: (before, after); globals: {chunk:
    # (before, after)}), for an owner whose values are still "before" to take "after"
    # exactly (``base + (after - base)`` can round differently from ``after``)
    exact: dict | None = None
    made: float = field(default_factory=time.time)  # wall time the replica made it (staleness)

    # items crossing processes are named by id: ``names`` holds the distinct ids an update
    # refers to and its row fields hold int32 codes into it (Python runs per distinct item,
    # not per pair)
    names: np.ndarray | None = None

    def as_ids(self, index: ItemIndex) -> "Update":
        """The same update naming items by id (to leave the process)."""
        if self.ids:
            return self
        ids = index.ids.ids
        fields = [np.asarray(self.rows, np.int64), np.asarray(self.pop[0], np.int64)]
        keys = list(self.pairs)
        for k in keys:
            i, j, _w = self.pairs[k]
            fields += [np.asarray(i, np.int64), np.asarray(j, np.int64)]
        cat_rows = np.array([r for r, _a in self.catalog], np.int64) if self.catalog else np.zeros(0, np.int64)
        fields.append(cat_rows)
        allr = np.concatenate(fields)
        uniq, inv = np.unique(allr, return_inverse=True)
        names = np.empty(len(uniq), dtype=object)
        names[:] = [ids[r] for r in uniq.tolist()]
        codes = np.split(inv.astype(np.int32), np.cumsum([len(f) for f in fields])[:-1])
        pairs = {k: (codes[2 + 2 * t], codes[3 + 2 * t], self.pairs[k][2]) for t, k in enumerate(keys)}
        cat = [(int(c), act) for c, (_r, act) in zip(codes[-1].tolist(), self.catalog)] if self.catalog \
            else self.catalog
        return Update(self.bucket, self.origin, self.seq, codes[0], self.add, (codes[1], self.pop[1]), pairs,
                      self.glob, True, cat, self.exact, self.made, names)

    def as_rows(self, index: ItemIndex) -> "Update":
        """The same update naming items by this process's rows (made if new)."""
        if not self.ids:
            return self
        local = index.rows(self.names)[0].astype(np.int32) if len(self.names) else np.zeros(0, np.int32)
        rows = lambda codes: local[np.asarray(codes, np.int64)]  # noqa: E731
        cat = [(int(local[c]), act) for c, act in self.catalog] if self.catalog else self.catalog
        return Update(self.bucket, self.origin, self.seq, rows(self.rows), self.add, (rows(self.pop[0]), self.pop[1]),
                      {k: (rows(i), rows(j), w) for k, (i, j, w) in self.pairs.items()}, self.glob, False, cat,
                      self.exact, self.made)


def _merge_specs(state: ItemState, kinds) -> list:
    return [s for s in state.arrays.specs.values() if s.stored and s.merge in kinds]


def _apply(state: ItemState, u: Update, row_add: list, base: dict | None = None) -> None:
    """Add an update's differences and replay its logs into ``state`` (and ``base``).
    Values still equal to what the sender had before its change take the sender's new
    values exactly (``Update.exact``): with one writer, the owner's values are the
    writer's bit for bit."""
    a = state.arrays
    rows = u.rows
    exact = (u.exact or {}) if base is None else {}  # a replica adds (its base follows its values)
    if len(rows):
        for s in row_add:
            d = u.add.get(s.name)
            if d is None:
                continue
            arr = a[s.name]
            cur = arr[rows]
            ex = exact.get(s.name)
            if ex is not None:
                before, after = ex
                arr[rows] = np.where(cur == before, after, cur + d).astype(arr.dtype)
            else:
                arr[rows] = (cur + d).astype(arr.dtype)
            if base is not None:
                base[s.name][rows] += d
    if len(u.pop[0]):
        replay_pop(a["pop"], np.asarray(u.pop[0], np.int64), np.asarray(u.pop[1], np.float64))
    for name, (i, j, w) in u.pairs.items():
        replay_pool(state, name, np.asarray(i, np.int32), np.asarray(j, np.int32), np.asarray(w, np.float64))
    for name, parts in u.glob.items():
        ex = exact.get(name, {})
        for c, d in parts:
            lo = c * CHUNK
            view = a[name][lo : lo + len(d)]
            e = ex.get(c)
            if e is not None:
                view[...] = np.where(view == e[0], e[1], view + d)
            else:
                view += d
            if base is not None:
                base[name][lo : lo + len(d)] += d
    if u.catalog:
        state.sync()
        for r, active in u.catalog:
            a = state.arrays
            a["active"][r] = active


def merged(updates: list[Update]) -> Update:
    """One update doing what ``updates`` do in order (rows may repeat: additions use
    ``np.add.at``-safe unique rows, logs are concatenated in order)."""
    if len(updates) == 1:
        return updates[0]
    rows = np.concatenate([np.asarray(u.rows, np.int64) for u in updates])
    uniq, inv = np.unique(rows, return_inverse=True)
    add = {}
    for name in {k for u in updates for k in u.add}:
        parts = [u.add[name] for u in updates if name in u.add]
        sample = parts[0]
        acc = np.zeros((len(uniq),) + sample.shape[1:], dtype=sample.dtype)
        np.add.at(acc, inv, np.concatenate([u.add[name] if name in u.add else
                                            np.zeros((len(u.rows),) + sample.shape[1:], sample.dtype)
                                            for u in updates]))
        add[name] = acc
    pop = (np.concatenate([np.asarray(u.pop[0], np.int32) for u in updates]),
           np.concatenate([np.asarray(u.pop[1], np.float64) for u in updates]))
    pairs = {}
    for name in {k for u in updates for k in u.pairs}:
        ps = [u.pairs[name] for u in updates if name in u.pairs]
        pairs[name] = tuple(np.concatenate([np.asarray(p[t]) for p in ps]) for t in range(3))
    glob: dict = {}
    for u in updates:
        for name, parts in u.glob.items():
            glob.setdefault(name, []).extend(parts)
    cat = [c for u in updates if u.catalog for c in u.catalog]
    return Update(-1, "merged", 0, uniq.astype(np.int32), add, pop, pairs, glob, catalog=cat or None)


def touched(u: Update, n_rows: int) -> np.ndarray:
    """The rows an update changes (sorted, distinct)."""
    parts = [np.asarray(u.rows, np.int64), np.asarray(u.pop[0], np.int64)]
    parts += [np.asarray(i, np.int64) for i, _j, _w in u.pairs.values()]
    if u.catalog:
        parts.append(np.array([r for r, _a in u.catalog], np.int64))
    return distinct_rows(np.concatenate(parts), n_rows)


class Replica:
    """A worker's copy of the item side (see the module docstring)."""

    def __init__(self, state: ItemState, rid: str, n_buckets: int, model=None, logging: bool = True):
        self.state = state
        self.id = rid
        self.n_buckets = n_buckets
        self.model = model
        self.seq = 0
        self.inbox: deque = deque()
        self.row_add = [s for s in _merge_specs(state, ("add",)) if s.kind == ROW]
        self.glob_add = [s for s in _merge_specs(state, ("add",)) if s.kind == GLOBAL]
        self.base: dict[str, np.ndarray] = {s.name: state.arrays[s.name].copy() for s in self.glob_add}
        self.based = 0  # rows whose base is set
        self.ages: list = []  # seconds between foreign updates' making and their arrival here, not yet taken
        state.on_rows = self._created
        if logging:
            state.start_log()
        self.sync()

    def _created(self, first: int, last: int) -> None:
        """Rows just created, still with their initial values: that is their base."""
        self._cover(first, last)

    def sync(self) -> None:
        self.state.sync()  # calls _created for new rows
        self._cover(self.based, len(self.state))

    def _cover(self, first: int, last: int) -> None:
        st = self.state
        self.based = max(self.based, last)
        for s in self.row_add:
            arr = st.arrays[s.name]
            old = self.base.get(s.name)
            if old is None or len(old) < len(arr):
                new = np.zeros(arr.shape, dtype=np.float64 if arr.dtype.kind == "f" else np.int64)
                if old is not None:
                    new[: len(old)] = old
                    new[first:last] = arr[first:last]
                else:
                    new[:last] = arr[:last]
                self.base[s.name] = new
            elif last > first:
                old[first:last] = arr[first:last]

    # -- out: the changes of a shard's batch ---------------------------------------------

    def flush(self, split: bool = True) -> list[Update]:
        """The changes since the last flush: one ``Update`` per bucket, or with
        ``split=False`` one for all (``bucket`` -1: sent to the other replicas directly)."""
        self.sync()
        st = self.state
        a = st.arrays
        n = len(st)
        rows = np.flatnonzero(a["dirty"][:n]).astype(np.int32)
        a["dirty"][rows] = 0
        index = st.index
        B = self.n_buckets
        deltas = {}
        exact: dict = {}  # row arrays: (before, after)
        gexact: dict = {}  # global arrays: {chunk: (before, after)}
        for s in self.row_add:
            now = a[s.name][rows]
            base = self.base[s.name]
            before = base[rows]
            deltas[s.name] = now - before
            exact[s.name] = (before, now)
            base[rows] = now
        k = int(st.plog_n[0])
        pop = (st.plog_i[:k].copy(), st.plog_x[:k].copy())
        st.plog_n[0] = 0
        pairs = {}
        for name, pool in st.pools.items():
            k = int(pool.lg_n[0])
            if k:
                pairs[name] = (pool.lg_i[:k].copy(), pool.lg_j[:k].copy(), pool.lg_w[:k].copy())
            pool.lg_n[0] = 0
        glob: list = []  # (bucket, name, chunk, differences)
        marks = []  # dirty-chunk arrays read: cleared once every array has been read, as
        # arrays may share one (ftrl.z and ftrl.n: clearing it after z would lose n's changes)
        for s in self.glob_add:
            arr, base = a[s.name], self.base[s.name]
            dirty = a[s.dirty] if s.dirty else None
            n_chunks = -(-len(arr) // CHUNK)
            chunks = range(n_chunks) if dirty is None else np.flatnonzero(dirty[:n_chunks])
            for c in chunks:
                lo, hi = int(c) * CHUNK, min((int(c) + 1) * CHUNK, len(arr))
                now = arr[lo:hi].copy()
                d = now - base[lo:hi]
                if not d.any():
                    continue
                gexact.setdefault(s.name, {})[int(c)] = (base[lo:hi].copy(), now)
                base[lo:hi] = now
                glob.append((global_bucket(s.name, int(c), B), s.name, int(c), d))
            if dirty is not None:
                marks.append(dirty)
        for dirty in marks:
            dirty[:] = 0
        made = time.time()
        if not split:
            if not (len(rows) or len(pop[0]) or pairs or glob):
                return []
            g: dict = {}
            for _b, name, c, d in glob:
                g.setdefault(name, []).append((c, d))
            self.seq += 1
            return [Update(-1, self.id, self.seq, rows, deltas, pop, pairs, g, made=made)]  # replicas add
        per_bucket: dict[int, dict] = {}
        if len(rows):
            for b, sel in _groups(index.bucket[rows], B):
                per_bucket[b] = {"rows": rows[sel], "add": {k: v[sel] for k, v in deltas.items()}, "pop": None,
                                 "pairs": {}, "glob": {}, "exact": {k: (x[sel], y[sel]) for k, (x, y) in exact.items()}}
        if len(pop[0]):
            pi, px = pop
            for b, sel in _groups(index.bucket[pi], B):
                per_bucket.setdefault(b, _empty())["pop"] = (pi[sel], px[sel])
        for name, (li, lj, lw) in pairs.items():
            for b, sel in _groups(index.bucket[li], B):
                per_bucket.setdefault(b, _empty())["pairs"][name] = (li[sel], lj[sel], lw[sel])
        for b, name, c, d in glob:
            p = per_bucket.setdefault(b, _empty())
            p["glob"].setdefault(name, []).append((c, d))
            p["exact"].setdefault(name, {})[c] = gexact[name][c]
        out = []
        for b, p in sorted(per_bucket.items()):
            self.seq += 1
            rows_b = p["rows"] if p["rows"] is not None else np.zeros(0, np.int32)
            pop_b = p["pop"] or (np.zeros(0, np.int32), np.zeros(0))
            out.append(Update(b, self.id, self.seq, rows_b, p["add"], pop_b, p["pairs"], p["glob"], made=made,
                              exact=p["exact"]))
        return out

    # -- in: other replicas' updates, forwarded by their owners ------------------------------

    def absorb(self) -> None:
        """Apply the updates waiting in the inbox (on the replica's own thread, between
        batches)."""
        if not self.inbox:
            return
        st = self.state
        index = st.index
        now = time.time()
        updates = []
        while self.inbox:
            updates.append(self.inbox.popleft().as_rows(index))
        self.sync()
        u = merged(updates)
        _apply(st, u, self.row_add, self.base)
        rows = touched(u, len(st))
        if len(rows):
            st.extend(int(rows.max()))
            st.refresh_pop(rows)
            if self.model is not None:
                self.model.derive(st, rows)
        self.ages.extend(now - v.made for v in updates if v.catalog is None)

    def take_staleness(self) -> np.ndarray:
        """Seconds between the making of foreign updates and their arrival here, since the
        last call."""
        out = np.array(self.ages, dtype=np.float64)
        self.ages.clear()
        return out


def _groups(buckets: np.ndarray, n_buckets: int):
    """(bucket, indices in their original order) per bucket present."""
    order, start = bucket_order(np.ascontiguousarray(buckets, dtype=np.int64), n_buckets)
    for b in np.flatnonzero(np.diff(start)):
        yield int(b), order[start[b]:start[b + 1]]


def _empty() -> dict:
    return {"rows": None, "add": {}, "pop": None, "pairs": {}, "glob": {}, "exact": {}}


def replay_pop(lp, rows, xs) -> None:
    replay_log_pop(lp, rows, xs)


def replay_pool(state: ItemState, name: str, i, j, w) -> None:
    """Replay co-occurrence increments into a pool, growing it as needed."""
    pool = state.pools[name]
    a = state.arrays
    start = 0
    while start < len(i):
        if not pool.is_dense:
            pool.reserve(a, len(state), max(4 * pool.cap_max, 2 * (len(i) - start)))
        start = replay_pairs(pool.dense, a[f"{name}.off"], a[f"{name}.nn"], a[f"{name}.cap"], pool.pj, pool.pc,
                              pool.used, pool.cap_max, i, j, w, start)
        if start < len(i):
            pool.reserve(a, len(state), 2 * len(pool.pj))
