"""The item side of one process: the owners' store of the buckets its workers own, and
the hub that makes the workers' replicas and forwards updates (see ``items``)."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from .items import Replica, Update, _apply, _merge_specs, touched
from .state import ROW, ItemIndex, ItemState


class OwnerStore:
    """The authoritative item values of the buckets a process owns (see the module
    docstring). Owners of different buckets may run on different worker threads: they
    take the store's lock while they apply (its arrays grow under it)."""

    def __init__(self, state: ItemState, model=None):
        self.state = state
        self.model = model
        self.lock = threading.Lock()
        self.dirty = np.zeros(state.arrays.cap, dtype=np.uint8)  # rows changed since their bucket's checkpoint
        self.glob_dirty: set = set()
        self.row_add = [s for s in _merge_specs(state, ("add",)) if s.kind == ROW]

    def _sync(self) -> None:
        self.state.sync()
        cap = self.state.arrays.cap
        if len(self.dirty) < cap:
            d = np.zeros(cap, dtype=np.uint8)
            d[: len(self.dirty)] = self.dirty
            self.dirty = d

    def apply(self, updates: list[Update]) -> list[Update]:
        """Apply updates in order; returns them with rows of this process (to forward)."""
        out = []
        with self.lock:
            st = self.state
            for u in updates:
                u = u.as_rows(st.index)
                self._sync()
                _apply(st, u, self.row_add)
                for name, parts in u.glob.items():
                    for c, _d in parts:
                        self.glob_dirty.add((name, c))
                rows = touched(u, len(st))
                if len(rows):
                    st.extend(int(rows.max()))
                    if self.model is not None:
                        self.model.derive(st, rows)
                    self.dirty[rows] = 1
                out.append(u)
        return out

    def catalog(self, bucket: int, ops: list[tuple[str, str]]) -> Update:
        """Catalog operations (of items of one bucket), in order: ``add`` makes an item
        recommendable, ``retire`` makes it never recommended again (until added back);
        returns them as an update for the replicas."""
        with self.lock:
            st = self.state
            changes = []
            for item, o in ops:
                row = st.add(item)
                self._sync()
                st.extend(row)
                st.arrays["active"][row] = 1 if o == "add" else 0
                self.dirty[row] = 1
                changes.append((row, 1 if o == "add" else 0))
        z = np.zeros(0, np.int32)
        return Update(bucket, "owner", 0, z, {}, (z, np.zeros(0)), {}, {}, catalog=changes)

    def rows_of_bucket(self, bucket: int) -> np.ndarray:
        n = len(self.state)
        return np.flatnonzero(self.state.index.bucket[:n] == bucket)


class Hub:
    """The item side of a flow in one process: the index, the owners' store, the workers'
    replicas, and where forwarded updates go.

    Replicas are made by ``start`` (one per worker, from the owners' store as restored)
    before the flow runs, so that every update forwarded from then on reaches each of them;
    a worker thread takes the next one on its first batch."""

    def __init__(self, make_state, n_buckets: int, model=None, processes: int = 1, process_id: int = 0,
                 workers: int = 1, checkpointing: bool = False):
        self.index = ItemIndex(n_buckets)
        self.n_buckets = n_buckets
        self.model = model
        self.make_state = make_state  # index -> ItemState
        self.owner = OwnerStore(make_state(self.index), model)
        self.replicas: dict[int, Replica] = {}  # worker thread -> its replica
        self.all: list[Replica] = []
        self.free: deque = deque()
        self.lock = threading.Lock()
        self.processes = processes
        self.process_id = process_id
        self.workers = workers
        self.checkpointing = checkpointing
        self.outbox: deque = deque()  # updates for the other processes (the sync topic)

    def start(self) -> "Hub":
        with self.lock:
            while len(self.all) < self.workers:
                self.free.append(self._make())
        return self

    def _make(self) -> Replica:
        r = Replica(self.make_state(self.index), f"p{self.process_id}w{len(self.all)}", self.n_buckets, self.model,
                    logging=self.needs_owners())
        self._seed(r)
        self.all.append(r)
        return r

    def replica(self) -> Replica:
        """This worker thread's replica."""
        tid = threading.get_ident()
        r = self.replicas.get(tid)
        if r is None:
            with self.lock:
                r = self.replicas.get(tid)
                if r is None:
                    r = self.free.popleft() if self.free else self._make()
                    self.replicas[tid] = r
        return r

    def _seed(self, r: Replica) -> None:
        """A new replica starts from the owners' values (after a restore, or a late start)."""
        own = self.owner.state
        with self.owner.lock:
            n = len(own)
            if n == 0:
                return
            r.sync()
            st = r.state
            a, oa = st.arrays, own.arrays
            for s in oa.specs.values():
                if s.stored and s.merge != "local":
                    if s.kind == ROW:
                        a[s.name][:n] = oa[s.name][:n]
                    else:
                        a[s.name][...] = oa[s.name]
            for name, pool in own.pools.items():
                for row in range(n):
                    js, cs = pool.row(oa, row)
                    st.pools[name].set_row(a, n, row, js, cs)
            for name, base in r.base.items():
                base[...] = a[name]
            st.extend(n - 1)
            st.resort()
            a["dirty"][:] = 0

    @property
    def direct(self) -> bool:
        """One process without checkpoints: nothing reads the owners' values, so replicas
        send their changes to each other directly (owners keep only the catalog)."""
        return self.processes == 1 and not self.checkpointing

    def shared(self) -> bool:
        """More than one replica in the job: owners forward updates."""
        return self.processes > 1 or len(self.all) > 1 or self.workers > 1

    def needs_owners(self) -> bool:
        """Replicas send their changes to owners when owners keep the checkpoint or the
        item side is shared; a single replica without checkpoints keeps it all."""
        return self.checkpointing or self.shared()

    def apply(self, updates: list[Update]) -> list[Update]:
        """An owner's updates: applied to the owners' store when it is checkpointed (the
        store is what a bucket's snapshot writes); without checkpoints nothing reads it
        after the start, and the owner only forwards."""
        if self.checkpointing:
            return self.owner.apply(updates)
        if self.processes > 1:
            return [u.as_rows(self.index) for u in updates]
        return updates

    def forward(self, updates: list[Update], force: bool = False) -> None:
        """Updates an owner applied, to every other replica (and other processes) when the
        item side is shared; ``force``: also with one replica (the catalog, which only
        owners write)."""
        if not updates or not (force or self.shared()):
            return
        for u in updates:
            self.deliver(u)
        if self.processes > 1:
            self.outbox.extend(updates)

    def deliver(self, u: Update) -> None:
        """One update to every replica of this process but the one it came from."""
        for r in self.all:
            if u.origin != r.id:
                r.inbox.append(u)
