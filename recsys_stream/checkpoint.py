"""A shard's state in and out of the checkpoint store (``storage``).

What a generation holds for a shard
-----------------------------------
- one record per user whose state changed since the last generation (keyed by external
  id): every USER array's row (factors, biases, counts, recency ring, statistics, ...)
  and the user's history (item rows, in order);
- one record per changed item (keyed by external id): its row number, every ITEM
  array's row, and for item x item arrays (co-occurrence) its row;
- the global arrays (hyper-parameter-free state such as the random stream, the global
  mean, popularity's landmark); large ones (FTRL weights) by chunks of 4,096 entries,
  only the chunks that changed;
- the emission bookkeeping: pending lists and send times of the refresh policy, the
  event ids inside the de-duplication window, the counts of users not yet admitted;
- the manifest: the layout of every record and the model's settings, checked on restore.

Derived structures are rebuilt, not stored: the popularity order (a sort), the
(user, item) pair set and the history pool (from the histories).

Users are loaded lazily: a restore reads the items and globals, and a user's record is
read when the user's next event arrives. With a TTL, users idle longer than it (in event
time) leave memory right after a checkpoint has stored them, and come back from the store
with exactly their state on their next event.
"""

from __future__ import annotations

import struct
from hashlib import blake2b

import numpy as np
import orjson

from .kernels.pairset import pairset_add, pairset_new, pairset_rebuild_without
from .kernels.popularity import _resort
from .state import GLOBAL, ITEM, ITEM2, USER
from .storage import EMIT, FORMAT, GLOBALS, ITEMS, USERS, CheckpointError, Store, decode

_U32 = struct.Struct(">I")
CHUNK = 4096
SMALL_GLOBAL = 64 << 10
# arrays that are bookkeeping, scratch or derived: never stored
NOT_STORED = ("scratch.", "book.", "dirty.", "hist.", "pop.order", "pop.rank", "last_ts")


def stored(name: str) -> bool:
    return not name.startswith(NOT_STORED) and not name.endswith(".dirty")


def layout(shard) -> dict:
    specs = shard.arrays.specs
    out: dict = {"user": [], "item": [], "item2": [], "global": []}
    for name in sorted(specs):
        s = specs[name]
        if not stored(name):
            continue
        kind = {USER: "user", ITEM: "item", ITEM2: "item2", GLOBAL: "global"}[s.kind]
        out[kind].append([name, s.dtype, list(s.tail)])
    return out


class Checkpointer:
    """Writes a shard's generations and restores them (see module docstring)."""

    def __init__(self, shard, store: Store, fault=None, fallback: bool = False):
        self.shard = shard
        self.store = store
        self.view: int | None = None  # read-only view of one generation (inspect)
        self.fault = fault
        self.fallback = fallback
        self.layout = layout(shard)
        a = shard.arrays
        self._user_specs = [(n, a.specs[n]) for n, _d, _t in self.layout["user"]]
        self._item_specs = [(n, a.specs[n]) for n, _d, _t in self.layout["item"]]
        self._item2 = [n for n, _d, _t in self.layout["item2"]]
        self._global = [n for n, _d, _t in self.layout["global"]]

    # -- settings recorded with every generation ---------------------------------------

    def meta(self) -> dict:
        s = self.shard.settings
        return {
            "format": FORMAT,
            "shard": self.shard.index,
            "model": s.model,
            "params": s.params.as_dict(),
            "seed": s.seed,
            "recent": s.recent,
            "half_life_days": s.half_life_days if s.half_life_days != float("inf") else "inf",
            "layout": self.layout,
            "users_total": self.shard.n_users_total,
        }

    def _check_meta(self, meta: dict, gen: int) -> None:
        mine = self.meta()
        for key in ("format", "model", "params", "seed", "recent", "half_life_days", "layout"):
            if meta.get(key) != mine[key]:
                raise CheckpointError(
                    f"shard {self.shard.index}: generation {gen} was written with {key}={meta.get(key)!r}, "
                    f"but this job runs {key}={mine[key]!r}; restoring it would give wrong state. Use the "
                    "settings the checkpoint was made with, or a new --checkpoint-dir"
                )

    # -- encoding -----------------------------------------------------------------

    def _user_payload(self, row: int) -> bytes:
        a = self.shard.arrays
        parts = [a[name][row].tobytes() for name, _s in self._user_specs]
        hist = self.shard.history.items(row, a)
        parts.append(_U32.pack(len(hist)))
        parts.append(hist.astype(np.int32).tobytes())
        return b"".join(parts)

    def _item_payload(self, row: int, n_items: int) -> bytes:
        a = self.shard.arrays
        parts = [_U32.pack(row)]
        parts += [a[name][row].tobytes() for name, _s in self._item_specs]
        for name in self._item2:
            parts.append(_U32.pack(n_items))
            parts.append(a[name][row, :n_items].tobytes())
        return b"".join(parts)

    def _global_records(self) -> list:
        a = self.shard.arrays
        out = []
        for name in self._global:
            arr = a[name]
            if arr.nbytes <= SMALL_GLOBAL:
                out.append((GLOBALS, name.encode(), arr.tobytes()))
                continue
            dirty = a.arrays.get(name.split(".")[0] + ".dirty")
            n_chunks = -(-len(arr) // CHUNK)
            chunks = range(n_chunks) if dirty is None else np.flatnonzero(dirty[:n_chunks])
            for c in chunks:
                out.append((GLOBALS, f"{name}#{int(c)}".encode(), arr[c * CHUNK : (c + 1) * CHUNK].tobytes()))
        return out

    # -- snapshot ---------------------------------------------------------------------

    def snapshot(self, emit: dict) -> int:
        """Write the next generation; returns its number."""
        sh = self.shard
        a = sh.arrays
        users = np.flatnonzero(a["dirty.u"][: len(sh.users)])
        items = np.flatnonzero(a["dirty.i"][: len(sh.items)])
        n_items = int(a["dims"][1])
        records = []
        for row in users:
            ext = sh.users.ids[row]
            if ext is not None:
                records.append((USERS, ext.encode("utf-8"), self._user_payload(int(row))))
        for row in items:
            records.append((ITEMS, sh.items.ids[row].encode("utf-8"), self._item_payload(int(row), n_items)))
        records += self._global_records()
        records.append((EMIT, b"emit", orjson.dumps(emit)))
        gen = self.store.write_generation(sh.index, records, self.meta(), fault=self.fault)
        a["dirty.u"][:] = 0
        a["dirty.i"][:] = 0
        for name in a.arrays:
            if name.endswith(".dirty") and a.specs[name].kind == GLOBAL:
                a[name][:] = 0
        return gen

    # -- restore ----------------------------------------------------------------------

    def restore(self, gen: int) -> dict:
        """Make the shard's state that of generation ``gen``; returns the emission state."""
        sh = self.shard
        idx = sh.index
        head = self.store.head(idx)
        if head < gen:
            raise CheckpointError(f"shard {idx}: Bytewax's snapshot names generation {gen} but the store's newest "
                                  f"is {head}; the LMDB files are older than the recovery partitions")
        self.store.rollback(idx, gen)
        try:
            m = self.store.verify_generation(idx, gen)
            self._check_meta(m.meta, gen)
            emit = self._load(gen)
        except CheckpointError as exc:
            if not self.fallback:
                raise CheckpointError(f"{exc}. Refusing to resume from it (--checkpoint-fallback would resume from "
                                      "the newest older generation that is intact, skipping the events between)") \
                    from None
            return self._fall_back(gen, exc)
        sh.n_users_total = int(m.meta.get("users_total", 0))
        return emit

    def view_generation(self, gen: int) -> dict:
        """Load generation ``gen`` without changing the store (for inspection)."""
        m = self.store.verify_generation(self.shard.index, gen)
        self._check_meta(m.meta, gen)
        self.view = gen
        emit = self._load(gen)
        self.shard.n_users_total = int(m.meta.get("users_total", 0))
        return emit

    def _fall_back(self, gen: int, cause: Exception) -> dict:
        import logging

        log = logging.getLogger("recsys_stream.checkpoint")
        idx = self.shard.index
        for older in sorted((g for g in self.store.generations(idx) if g < gen), reverse=True):
            try:
                self.store.rollback(idx, older)
                m = self.store.verify_generation(idx, older)
                self._check_meta(m.meta, older)
                self.shard.reset()
                emit = self._load(older)
            except CheckpointError:
                continue
            log.error("CHECKPOINT FALLBACK: shard %d generation %d is unusable (%s); resumed from generation %d. "
                      "The events applied between generations %d and %d are SKIPPED: the model never learns them",
                      idx, gen, cause, older, older, gen)
            self.shard.n_users_total = int(m.meta.get("users_total", 0))
            return emit
        raise CheckpointError(f"shard {idx}: generation {gen} is unusable ({cause}) and no older generation is "
                              "intact; start from an empty --checkpoint-dir") from None

    def _load(self, gen: int) -> dict:
        sh = self.shard
        a = sh.arrays
        idx = sh.index
        chunks: dict = {}
        for entity, _g, payload in self.store.scan(idx, GLOBALS, gen):
            name = entity.decode()
            if "#" in name:
                base, c = name.split("#")
                chunks.setdefault(base, []).append((int(c), payload))
            elif name in a.arrays:
                a[name][...] = np.frombuffer(payload, dtype=a[name].dtype).reshape(a[name].shape)
        for base, parts in chunks.items():
            arr = a[base]
            for c, payload in parts:
                v = np.frombuffer(payload, dtype=arr.dtype)
                arr[c * CHUNK : c * CHUNK + len(v)] = v
        items = [(entity.decode("utf-8"), payload) for entity, _g, payload in self.store.scan(idx, ITEMS, gen)]
        rows = [_U32.unpack_from(p)[0] for _e, p in items]
        n = max(rows) + 1 if rows else 0
        ids: list = [None] * n
        for (ext, _p), r in zip(items, rows):
            ids[r] = ext
        if any(x is None for x in ids):
            raise CheckpointError(f"shard {idx}: generation {gen} lacks the records of some item rows")
        for ext in ids:
            sh.items.add(ext)
        a.ensure(max(len(sh.users), 1), n)
        for (ext, payload), r in zip(items, rows):
            off = self._unpack_row(payload, 4, self._item_specs, r)
            for name in self._item2:
                (m,) = _U32.unpack_from(payload, off)
                off += 4
                arr = a[name]
                arr[r, :m] = np.frombuffer(payload[off : off + 4 * m], dtype=arr.dtype)
                off += arr.itemsize * m
        n_items = int(a["dims"][1])
        _resort(a["pop"], n_items, a["pop.order"], a["pop.rank"])
        emit = self.store.get(idx, EMIT, b"emit", gen)
        return orjson.loads(emit) if emit is not None else {}

    def _unpack_row(self, payload: bytes, off: int, specs: list, row: int) -> int:
        """Copy one row of each array in ``specs`` from ``payload`` (from ``off``); returns
        the offset after them."""
        a = self.shard.arrays
        for name, _spec in specs:
            arr = a[name]
            size = arr[row].nbytes
            arr[row] = np.frombuffer(payload[off : off + size], dtype=arr.dtype).reshape(arr[row].shape)
            off += size
        return off

    # -- users, lazily ----------------------------------------------------------------

    def fetch_users(self, exts: list[str]) -> dict:
        """Payloads of the listed users that the store has (at its head generation)."""
        out = {}
        idx = self.shard.index
        head = self.store.head(idx) if self.view is None else self.view
        if head == 0:
            return out
        with self.store.env.begin() as txn:
            for ext in exts:
                hit = self.store.latest(txn, idx, USERS, ext.encode("utf-8"), head)
                if hit is not None:
                    out[ext] = decode(hit[1], f"shard {idx} U {ext!r} generation {hit[0]}")
        return out

    def load_user(self, ext: str, payload: bytes) -> int:
        """Put a stored user back in memory; returns the row."""
        sh = self.shard
        a = sh.arrays
        row = sh.users.add(ext)
        a.ensure(len(sh.users), len(sh.items))
        off = self._unpack_row(payload, 0, self._user_specs, row)
        (h,) = _U32.unpack_from(payload, off)
        off += 4
        hist = np.frombuffer(payload[off : off + 4 * h], dtype=np.int32)
        sh.history.reserve(np.array([row]), np.array([h]), a)
        o = int(a["hist.off"][row])
        sh.history.pool[o : o + h] = hist
        a["hist.len"][row] = h
        if row >= a["dims"][0]:
            a["dims"][0] = row + 1
        sh.seen.reserve(h)
        for i in hist:
            pairset_add(sh.seen.table, sh.seen.count, row, int(i))
        return row

    def evict_idle(self, ttl_s: float) -> int:
        """Drop users idle for more than ``ttl_s`` of event time (their state is stored)."""
        sh = self.shard
        a = sh.arrays
        n = len(sh.users)
        if n == 0:
            return 0
        last = a["last_ts"][:n]
        live = np.array([x is not None for x in sh.users.ids], dtype=bool)
        if not live.any():
            return 0
        newest = float(last[live].max())
        idle = np.flatnonzero(live & (last < newest - ttl_s) & (a["dirty.u"][:n] == 0))
        if not len(idle):
            return 0
        drop = np.zeros(a.cap_users, dtype=np.uint8)
        drop[idle] = 1
        old = sh.seen.table
        new = pairset_new(len(old))
        sh.seen.count[0] = 0
        pairset_rebuild_without(new, sh.seen.count, old, drop)
        sh.seen.table = new
        for row in idle:
            ext = sh.users.ids[row]
            sh.users.remove(ext)
            for name, spec in a.specs.items():
                if spec.kind == USER:
                    a[name][row] = spec.fill
        return len(idle)


def digest(store: Store, gens: dict[int, int]) -> tuple[str, dict]:
    """A stable hash of the model state of every shard at the given generations, keyed
    by external ids: row numbers and write order do not change it. Emission bookkeeping
    (pending lists, versions' timers, de-duplication ids) is left out."""
    h = blake2b(digest_size=16)
    counts = {"users": 0, "items": 0}
    for shard in sorted(gens):
        gen = gens[shard]
        m = store.manifest(shard, gen)
        if m is None:
            raise CheckpointError(f"shard {shard}: generation {gen} has no manifest")
        lay = m.meta["layout"]
        item_ids: dict[int, str] = {}
        item_recs = []
        for entity, _g, payload in store.scan(shard, ITEMS, gen):
            row = _U32.unpack_from(payload)[0]
            item_ids[row] = entity.decode("utf-8")
            item_recs.append((entity, payload))
        # globals, in name order (chunks joined); dims depends on row allocation: left out
        glob: dict = {}
        for entity, _g, payload in store.scan(shard, GLOBALS, gen):
            name = entity.decode()
            base, _, c = name.partition("#")
            glob.setdefault(base, []).append((int(c or 0), payload))
        for base in sorted(glob):
            if base == "dims":
                continue
            h.update(b"G" + base.encode())
            for _c, payload in sorted(glob[base]):
                h.update(payload)
        sizes_u = [(n, np.dtype(d).itemsize * int(np.prod(t or [1]))) for n, d, t in lay["user"]]
        for entity, _g, payload in sorted(store.scan(shard, USERS, gen)):
            counts["users"] += 1
            h.update(b"U" + entity)
            off = 0
            for name, size in sizes_u:
                chunk = payload[off : off + size]
                if name == "recent":  # item rows -> ids
                    rows = np.frombuffer(chunk, dtype=np.int32)
                    h.update("|".join(item_ids.get(int(r), "") for r in rows).encode())
                else:
                    h.update(chunk)
                off += size
            (n,) = _U32.unpack_from(payload, off)
            rows = np.frombuffer(payload[off + 4 : off + 4 + 4 * n], dtype=np.int32)
            h.update("|".join(item_ids[int(r)] for r in rows).encode())
        sizes_i = [(n, np.dtype(d).itemsize * int(np.prod(t or [1]))) for n, d, t in lay["item"]]
        for entity, payload in sorted(item_recs):
            counts["items"] += 1
            h.update(b"I" + entity)
            off = 4
            for _name, size in sizes_i:
                h.update(payload[off : off + size])
                off += size
            for _name, _d, _t in lay["item2"]:
                (n,) = _U32.unpack_from(payload, off)
                vals = np.frombuffer(payload[off + 4 : off + 4 + 4 * n], dtype=np.float32)
                off += 4 + 4 * n
                nz = np.flatnonzero(vals)
                h.update("|".join(f"{item_ids[int(j)]}={vals[j]!r}" for j in sorted(nz, key=lambda j: item_ids[int(j)]))
                         .encode())
    return h.hexdigest(), counts
