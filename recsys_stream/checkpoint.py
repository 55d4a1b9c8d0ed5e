"""A shard's state in and out of the checkpoint store (``storage``).

What a generation holds for a shard
-----------------------------------
- one record per user whose state changed since the last generation (keyed by external
  id), and one per changed item (``codec``);
- the global arrays of both sides (the user side's random stream, the global mean,
  popularity's landmark, hashed weights by changed chunks);
- the emission bookkeeping (``emit``): applied source positions, the event ids inside the
  de-duplication window, the counts of users not yet admitted, the refresh policy's
  pending lists and send times;
- the manifest: the layout of every record and the model's settings, checked on restore.

Derived structures are rebuilt, not stored: the popularity order (a sort), the (user,
item) pair set and the history pool (from the histories).

Users are loaded lazily: a restore reads the items and globals, and a user's record is
read when the user's next event arrives. With a TTL, users idle longer than it (in event
time) leave memory right after a checkpoint has stored them, and come back from the store
with exactly their state on their next event.

The checkpointer sees its shard through a narrow interface: ``users`` (a ``UserState``),
``items`` (an ``ItemState``), ``index``, ``reset()`` (empty state) and ``meta()`` (the
settings a generation must have been written with).
"""

from __future__ import annotations

import logging
from hashlib import blake2b
from typing import Protocol

import numpy as np
import orjson

from . import codec
from .state import ItemState, UserState
from .storage import EMIT, FORMAT, GLOBALS, ITEMS, USERS, CheckpointError, Store, decode

log = logging.getLogger("recsys_stream.checkpoint")

SETTINGS_KEYS = ("format", "model", "params", "seed", "recent", "half_life_days", "layout")


class Persisted(Protocol):
    index: int
    users: UserState
    items: ItemState

    def reset(self) -> None: ...

    def meta(self) -> dict: ...


class SettingsMismatch(CheckpointError):
    """A generation written with other settings: a user's mistake, never a reason to fall
    back to an older generation (they were written with the same settings)."""


def layouts(users: UserState, items: ItemState) -> dict:
    return {"user": codec.layout(users.arrays), "item": codec.layout(items.arrays, items.pools)}


class Checkpointer:
    """Writes a shard's generations and restores them (see module docstring)."""

    def __init__(self, owner: Persisted, store: Store, fault=None, fallback: bool = False):
        self.owner = owner
        self.store = store
        self.view: int | None = None  # read-only view of one generation (inspect)
        self.fault = fault
        self.fallback = fallback

    @property
    def index(self) -> int:
        return self.owner.index

    def meta(self, users_total: int | None = None) -> dict:
        o = self.owner
        m = {"format": FORMAT, "shard": o.index, **o.meta(), "layout": layouts(o.users, o.items)}
        m["users_total"] = o.users.total if users_total is None else users_total
        return m

    def check_meta(self, meta: dict, gen: int) -> None:
        mine = self.meta()
        for key in SETTINGS_KEYS:
            if meta.get(key) != mine[key]:
                raise SettingsMismatch(
                    f"shard {self.index}: generation {gen} was written with {key}={meta.get(key)!r}, "
                    f"but this job runs {key}={mine[key]!r}; restoring it would give wrong state. Run with the "
                    "settings the checkpoint was made with (`recsys-stream inspect DIR --json` shows them), or "
                    "start from a new --checkpoint-dir"
                )

    # -- snapshot ---------------------------------------------------------------------

    def snapshot(self, emit: dict) -> int:
        """Write the next generation (what changed since the last); returns its number."""
        users, items = self.owner.users, self.owner.items
        ua, ia = users.arrays, items.arrays
        records = []
        ids = users.ids.ids
        for row in np.flatnonzero(ua["dirty"][: len(users)]):
            ext = ids[row]
            if ext is not None:
                records.append((USERS, ext.encode("utf-8"), codec.encode_user(users, int(row))))
        iids = items.ids.ids
        for row in np.flatnonzero(ia["dirty"][: len(items)]):
            records.append((ITEMS, iids[row].encode("utf-8"), codec.encode_item(items, int(row))))
        for arrays in (ua, ia):
            records += [(GLOBALS, name, payload) for name, payload in codec.global_records(arrays)]
        records.append((EMIT, b"emit", orjson.dumps(emit)))
        gen = self.store.write_generation(self.index, records, self.meta(), fault=self.fault)
        ua["dirty"][:] = 0
        ia["dirty"][:] = 0
        codec.clear_global_dirt(ua)
        codec.clear_global_dirt(ia)
        return gen

    # -- restore ----------------------------------------------------------------------

    def restore(self, gen: int) -> dict:
        """Make the shard's state that of generation ``gen``; returns the emission state.

        Generations newer than ``gen`` were never committed by Bytewax: they are rolled
        back. If ``gen`` itself is unusable (corrupt, truncated) and ``fallback`` is on,
        the newest older generation that verifies is found first (read only) and only
        then is the store rolled back to it; a generation written with other settings is
        refused without touching anything older."""
        idx = self.index
        head = self.store.head(idx)
        if head < gen:
            raise CheckpointError(f"shard {idx}: Bytewax's snapshot names generation {gen} but the store's newest "
                                  f"is {head}; the LMDB files are older than the recovery partitions")
        try:
            m = self.store.verify_generation(idx, gen)
            self.check_meta(m.meta, gen)
            emit = self._load(gen)
        except SettingsMismatch:
            raise
        except CheckpointError as exc:
            if not self.fallback:
                raise CheckpointError(f"{exc}. Refusing to resume from it (--checkpoint-fallback would resume from "
                                      "the newest older generation that is intact, skipping the events between)") \
                    from None
            return self._fall_back(gen, exc)
        self.store.rollback(idx, gen)
        self.owner.users.total = int(m.meta.get("users_total", 0))
        return emit

    def view_generation(self, gen: int) -> dict:
        """Load generation ``gen`` without changing the store (for inspection)."""
        m = self.store.verify_generation(self.index, gen)
        self.check_meta(m.meta, gen)
        self.view = gen
        emit = self._load(gen)
        self.owner.users.total = int(m.meta.get("users_total", 0))
        return emit

    def _fall_back(self, gen: int, cause: Exception) -> dict:
        idx = self.index
        for older in sorted((g for g in self.store.generations(idx) if g < gen), reverse=True):
            try:
                m = self.store.verify_generation(idx, older)
            except CheckpointError:
                continue
            self.check_meta(m.meta, older)
            self.owner.reset()
            emit = self._load(older)
            self.store.rollback(idx, older)  # only now: the generation is known to be usable
            log.error("CHECKPOINT FALLBACK: shard %d generation %d is unusable (%s); resumed from generation %d. "
                      "The events applied between generations %d and %d are SKIPPED: the model never learns them",
                      idx, gen, cause, older, older, gen)
            self.owner.users.total = int(m.meta.get("users_total", 0))
            return emit
        raise CheckpointError(f"shard {idx}: generation {gen} is unusable ({cause}) and no older generation is "
                              "intact; start from an empty --checkpoint-dir") from None

    def _load(self, gen: int) -> dict:
        users, items = self.owner.users, self.owner.items
        idx = self.index
        glob = [(entity.decode(), payload) for entity, _g, payload in self.store.scan(idx, GLOBALS, gen)]
        codec.load_globals(users.arrays, glob)
        codec.load_globals(items.arrays, glob)
        recs = [(entity.decode("utf-8"), payload) for entity, _g, payload in self.store.scan(idx, ITEMS, gen)]
        rows = [codec.item_row_of(p) for _e, p in recs]
        n = max(rows) + 1 if rows else 0
        ids: list = [None] * n
        for (ext, _p), r in zip(recs, rows):
            ids[r] = ext
        if any(x is None for x in ids):
            raise CheckpointError(f"shard {idx}: generation {gen} lacks the records of some item rows")
        for ext in ids:
            items.add(ext)
        for _ext, payload in recs:
            codec.decode_item_into(items, payload)
        items.extend(n - 1)
        items.resort()
        emit = self.store.get(idx, EMIT, b"emit", gen)
        return orjson.loads(emit) if emit is not None else {}

    # -- users, lazily ----------------------------------------------------------------

    def load_users(self, exts: list[str]) -> set:
        """Bring the listed users that the store has (at its head generation) back into
        memory; returns the ids found."""
        idx = self.index
        head = self.store.head(idx) if self.view is None else self.view
        if head == 0:
            return set()
        users = self.owner.users
        found = set()
        with self.store.env.begin() as txn:
            for ext in exts:
                hit = self.store.latest(txn, idx, USERS, ext.encode("utf-8"), head)
                if hit is not None:
                    payload = decode(hit[1], f"shard {idx} U {ext!r} generation {hit[0]}")
                    values, hist = codec.decode_user(users, payload)
                    users.restore_row(ext, values, hist)
                    found.add(ext)
        return found

    def evict_idle(self, ttl_s: float) -> int:
        """Drop users idle for more than ``ttl_s`` of event time (their state is stored)."""
        users = self.owner.users
        a = users.arrays
        n = len(users)
        if n == 0:
            return 0
        last = a["last_ts"][:n]
        live = np.fromiter((x is not None for x in users.ids.ids), dtype=bool, count=n)
        if not live.any():
            return 0
        newest = float(last[live].max())
        idle = np.flatnonzero(live & (last < newest - ttl_s) & (a["dirty"][:n] == 0))
        users.evict(idle)
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
            item_ids[codec.item_row_of(payload)] = entity.decode("utf-8")
            item_recs.append((entity, payload))
        glob: dict = {}
        for entity, _g, payload in store.scan(shard, GLOBALS, gen):
            base, _, c = entity.decode().partition("#")
            glob.setdefault(base, []).append((int(c or 0), payload))
        for base in sorted(glob):
            h.update(b"G" + base.encode())
            for _c, payload in sorted(glob[base]):
                h.update(payload)
        sizes_u = [(n, np.dtype(d).itemsize * int(np.prod(t or [1]))) for n, d, t in lay["user"]["row"]]
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
            (n,) = codec.U32.unpack_from(payload, off)
            rows = np.frombuffer(payload[off + 4 : off + 4 + 4 * n], dtype=np.int32)
            h.update("|".join(item_ids[int(r)] for r in rows).encode())
        sizes_i = [(n, np.dtype(d).itemsize * int(np.prod(t or [1]))) for n, d, t in lay["item"]["row"]]
        for entity, payload in sorted(item_recs):
            counts["items"] += 1
            h.update(b"I" + entity)
            off = 4
            for _name, size in sizes_i:
                h.update(payload[off : off + size])
                off += size
            for _name, _cap in lay["item"].get("pools", []):
                (n,) = codec.U32.unpack_from(payload, off)
                js = np.frombuffer(payload[off + 4 : off + 4 + 4 * n], dtype=np.int32)
                cs = np.frombuffer(payload[off + 4 + 4 * n : off + 4 + 8 * n], dtype=np.float32)
                off += 4 + 8 * n
                pairs = sorted((item_ids[int(j)], float(c)) for j, c in zip(js, cs))
                h.update("|".join(f"{j}={c!r}" for j, c in pairs).encode())
    return h.hexdigest(), counts

