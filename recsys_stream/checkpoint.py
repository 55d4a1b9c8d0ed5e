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
from dataclasses import dataclass
from hashlib import blake2b
from typing import Protocol

import numpy as np
import orjson

from . import codec
from .state import ItemState, UserState  # noqa: F401
from .storage import BUCKET_PART, EMIT, FORMAT, GLOBALS, ITEMS, USERS, CheckpointError, Store, decode

log = logging.getLogger("recsys_stream.checkpoint")

SETTINGS_KEYS = ("format", "model", "params", "seed", "recent", "half_life_days", "layout")


class Persisted(Protocol):
    index: int
    users: UserState
    items: ItemState

    def reset(self) -> None: ...

    def meta(self) -> dict: ...

    def group(self, g: int): ...  # shard.Group

    def drop_group(self, g: int) -> None: ...


# what a refused resume tells the user, after the reason
REFUSE_USERS = ("Refusing to resume from it (--checkpoint-fallback would resume from the newest older generation "
                "that is intact, skipping the events between)")
REFUSE_ITEMS = ("Refusing to resume from it: the item side has no fallback generation; restore the directory from a "
                "backup or start from an empty one")


class SettingsMismatch(CheckpointError):
    """A generation written with other settings: a user's mistake, never a reason to fall
    back to an older generation (they were written with the same settings)."""


def layouts(users: UserState, items: ItemState) -> dict:
    return {"user": codec.layout(users.arrays), "item": codec.layout(items.arrays, items.pools)}


# retrieval settings (``factorindex.FactorIndex``): they choose how lists are searched, not what is
# stored, so a checkpoint restores under other values of them
RETRIEVAL_PARAMS = ("ann", "ann_min_items", "ann_recall", "ann_lag")


# parameters added after checkpoints were written with the model that has them, each with the
# value that does what the model did before it existed: a checkpoint without one was made
# with that value, so it restores under that value and refuses any other
ADDED_PARAMS = {"head_negatives": 0.0, "item_decay": 0.0}


def _comparable(key: str, value, mine=None):
    """``value`` of setting ``key`` as a restore compares it; ``mine``: the job's value of
    it, when ``value`` is the stored one (an added parameter missing from a stored
    ``params`` takes its old value, where the job's model has it)."""
    if key == "params" and isinstance(value, dict):
        out = {k: v for k, v in value.items() if k not in RETRIEVAL_PARAMS}
        if isinstance(mine, dict):
            out |= {k: v for k, v in ADDED_PARAMS.items() if k in mine and k not in out}
        return out
    return value


class Checkpointer:
    """Writes a shard's generations and restores them (see module docstring)."""

    def __init__(self, owner: Persisted, store: Store, fault=None, fallback: bool = False, with_items: bool = True,
                 part: int | None = None):
        self.owner = owner
        self.with_items = with_items  # False: the item side is shared, its owners store it
        self.store = store
        self.part = owner.index if part is None else part  # the key group: its users, its part of the store
        self.view: int | None = None  # read-only view of one generation (inspect)
        self.fault = fault
        self.fallback = fallback

    @property
    def index(self) -> int:
        return self.part

    def _group(self):
        return self.owner.group(self.part)

    def meta(self, users_total: int | None = None) -> dict:
        o = self.owner
        m = {"format": FORMAT, "shard": self.part, **o.meta(), "layout": layouts(o.users, o.items),
             "items": self.with_items}
        m["users_total"] = self._group().total if users_total is None else users_total
        return m

    def check_meta(self, meta: dict, gen: int) -> None:
        mine = self.meta()
        for key in SETTINGS_KEYS:
            stored = _comparable(key, meta.get(key), mine[key])
            if stored != _comparable(key, mine[key]):
                raise SettingsMismatch(
                    f"shard {self.index}: generation {gen} was written with {key}={stored!r}, "
                    f"but this job runs {key}={mine[key]!r}; restoring it would give wrong state. Run with the "
                    "settings the checkpoint was made with (`recsys-stream inspect DIR --json` shows them), or "
                    "start from a new --checkpoint-dir"
                )

    # -- snapshot ---------------------------------------------------------------------

    def snapshot(self, emit: dict) -> int:
        """Write the next generation (what changed since the last); returns its number."""
        return self.stage(emit).write(self.store, self.fault)

    def stage(self, emit: dict) -> "Staged":
        """The next generation's records, taken now (the rows' dirty marks are cleared),
        to be written with ``Staged.write`` (or with others, ``write_staged``)."""
        users, items = self.owner.users, self.owner.items
        ua, ia = users.arrays, items.arrays
        records = []
        ids = users.ids.ids
        n = len(users)
        rows = np.flatnonzero((ua["dirty"][:n] != 0) & (ua["group"][:n] == self.part))
        for row in rows:
            ext = ids[row]
            if ext is not None:
                records.append((USERS, ext.encode("utf-8"), codec.encode_user(users, int(row), items.index)))
        records += [(GLOBALS, name, payload) for name, payload in codec.global_records(ua)]
        if self.with_items:
            iids = items.ids.ids
            dirty = np.flatnonzero(ia["dirty"][: len(items)])
            records += [(ITEMS, iids[r].encode("utf-8"), payload) for r, payload in
                        zip(dirty.tolist(), codec.encode_items(items, dirty))]
            records += [(GLOBALS, name, payload) for name, payload in codec.global_records(ia)]
        records.append((EMIT, b"emit", orjson.dumps(emit)))
        staged = Staged(self.index, records, self.meta(), self.store.head(self.index) + 1)
        ua["dirty"][rows] = 0
        codec.clear_global_dirt(ua)
        if self.with_items:
            ia["dirty"][:] = 0
            codec.clear_global_dirt(ia)
        return staged

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
                raise CheckpointError(f"{exc}. {REFUSE_USERS}") from None
            return self._fall_back(gen, exc)
        self.store.rollback(idx, gen)
        self._group().total = int(m.meta.get("users_total", 0))
        return emit

    def view_generation(self, gen: int) -> dict:
        """Load generation ``gen`` without changing the store (for inspection)."""
        m = self.store.verify_generation(self.index, gen)
        self.check_meta(m.meta, gen)
        self.view = gen
        emit = self._load(gen)
        self._group().total = int(m.meta.get("users_total", 0))
        return emit

    def _fall_back(self, gen: int, cause: Exception) -> dict:
        idx = self.index
        for older in sorted((g for g in self.store.generations(idx) if g < gen), reverse=True):
            try:
                m = self.store.verify_generation(idx, older)
            except CheckpointError:
                continue
            self.check_meta(m.meta, older)
            if self.with_items:
                self.owner.reset()
            else:
                self.owner.drop_group(self.part)
            emit = self._load(older)
            self.store.rollback(idx, older)  # only now: the generation is known to be usable
            log.error("CHECKPOINT FALLBACK: shard %d generation %d is unusable (%s); resumed from generation %d. "
                      "The events applied between generations %d and %d are SKIPPED: the model never learns them",
                      idx, gen, cause, older, older, gen)
            self._group().total = int(m.meta.get("users_total", 0))
            return emit
        raise CheckpointError(f"shard {idx}: generation {gen} is unusable ({cause}) and no older generation is "
                              "intact; start from an empty --checkpoint-dir") from None

    def _load(self, gen: int) -> dict:
        """Load generation ``gen``, which ``verify_generation`` has just checked."""
        users, items = self.owner.users, self.owner.items
        idx = self.index
        glob = [(entity.decode(), payload) for entity, _g, payload in self.store.scan(idx, GLOBALS, gen, verified=gen)]
        codec.load_globals(users.arrays, glob)
        if self.with_items:
            codec.load_globals(items.arrays, glob)
            load_items(items, [(e.decode("utf-8"), p) for e, _g, p in self.store.scan(idx, ITEMS, gen, verified=gen)])
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
        with self.store.reading() as txn:
            for ext in exts:
                hit = self.store.latest(txn, idx, USERS, ext.encode("utf-8"), head)
                if hit is not None:
                    payload = decode(hit[1], f"shard {idx} U {ext!r} generation {hit[0]}")
                    values, hist = codec.decode_user(users, payload, self.owner.items.index)
                    row = users.restore_row(ext, values, hist)
                    users.arrays["group"][row] = self.part
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
        idle = np.flatnonzero(live & (last < newest - ttl_s) & (a["dirty"][:n] == 0) & (a["group"][:n] == self.part))
        users.evict(idle)
        return len(idle)


def load_items(items: ItemState, recs: list) -> None:
    """Item records ``(id, payload)`` into ``items``: every id first (rows in the index),
    then the values (neighbour keys resolve to rows), then the derived order."""
    if not items.index.place([(ext, codec.item_row_of(p)) for ext, p in recs]):
        pass  # rows as they come: the ids were written by several processes, or the index is in use
    rows = items.index.restore_rows([ext for ext, _p in recs])
    items.sync()
    codec.decode_items_into(items, rows, [p for _e, p in recs])
    if len(rows):
        items.extend(int(rows.max()))
    items.resort()


def committed(store: Store, handles: dict) -> dict:
    """part -> generation of Bytewax's committed snapshot handles (shards and buckets)."""
    out = {}
    for h in handles.values():
        if "bucket" in h:
            out[OWNER_PART + int(h["bucket"])] = int(h["gen"])
        elif "shard" in h:
            out[int(h["shard"])] = int(h["gen"])
    return out


def digest(store: Store, gens: dict[int, int]) -> tuple[str, dict]:
    """A stable hash of the model state of every shard and item bucket at the given
    generations, keyed by external ids: row numbers and write order do not change it.
    Emission bookkeeping (pending lists, versions' timers, de-duplication ids) is left out."""
    from .events import stable_hash64

    h = blake2b(digest_size=16)
    counts = {"users": 0, "items": 0}
    metas = {}
    names: dict[int, str] = {}  # item key -> id, over every part
    items_of: dict[int, list] = {}
    for part in sorted(gens):
        m = store.manifest(part, gens[part])
        if m is None:
            raise CheckpointError(f"part {part}: generation {gens[part]} has no manifest")
        metas[part] = m
        recs = [(e, p) for e, _g, p in store.scan(part, ITEMS, gens[part])]
        items_of[part] = recs
        for e, _p in recs:
            names[stable_hash64(e.decode("utf-8"))] = e.decode("utf-8")

    def ids(keys) -> str:
        return "|".join(names.get(int(k), "") for k in keys)

    for part in sorted(gens):
        gen = gens[part]
        lay = metas[part].meta["layout"]
        glob: dict = {}
        for entity, _g, payload in store.scan(part, GLOBALS, gen):
            base, _, c = entity.decode().partition("#")
            glob.setdefault(base, []).append((int(c or 0), payload))
        for base in sorted(glob):
            if base == "pop_meta":
                continue  # the reference of a derived copy, each state's own
            h.update(b"G" + base.encode())
            for _c, payload in sorted(glob[base]):
                h.update(payload)
        user_row = lay["user"]["row"] if "user" in lay else []
        for entity, _g, payload in sorted(store.scan(part, USERS, gen)) if user_row else ():
            counts["users"] += 1
            h.update(b"U" + entity)
            off = 0
            for name, dtype, tail, *rest in user_row:
                size = codec.row_size(codec._Spec(dtype, tail, bool(rest)))
                chunk = payload[off : off + size]
                h.update(ids(np.frombuffer(chunk, dtype=np.uint64)).encode() if rest else chunk)
                off += size
            (n,) = codec.U32.unpack_from(payload, off)
            h.update(ids(np.frombuffer(payload[off + 4 : off + 4 + 8 * n], dtype=np.uint64)).encode())
        item_lay = lay.get("item")
        if item_lay is None:
            continue
        sizes = [codec.row_size(codec._Spec(d, t)) for _n, d, t, *_r in item_lay["row"]]
        for entity, payload in sorted(items_of[part]):
            counts["items"] += 1
            h.update(b"I" + entity)
            off = 4  # the writer's row number: not state
            for size in sizes:
                h.update(payload[off : off + size])
                off += size
            for keys, cs in codec.neighbor_keys(payload, item_lay):
                pairs = sorted((names.get(int(k), ""), float(c)) for k, c in zip(keys, cs))
                h.update("|".join(f"{j}={c!r}" for j, c in pairs).encode())
    return h.hexdigest(), counts


OWNER_PART = BUCKET_PART  # the store's part of item bucket b is OWNER_PART + b (users: their shard's index)


class BucketCheckpointer:
    """An item bucket's generations: the rows of the bucket its owner changed since the
    last one (records keyed by item id, as ``codec`` writes them) and the chunks of global
    arrays the bucket owns (``items.global_bucket``)."""

    def __init__(self, store: Store, owner, bucket: int, meta: dict, fault=None):
        self.store = store
        self.owner = owner  # hub.OwnerStore
        self.bucket = bucket
        self.part = OWNER_PART + bucket
        self.base_meta = meta
        self.fault = fault

    def meta(self) -> dict:
        st = self.owner.state
        return {"format": FORMAT, "bucket": self.bucket, **self.base_meta,
                "layout": {"item": codec.layout(st.arrays, st.pools)}}

    def snapshot(self) -> int:
        return self.stage().write(self.store, self.fault)

    def stage(self) -> "Staged":
        """The bucket's next generation, taken now (see ``Checkpointer.stage``)."""
        from .items import CHUNK, global_bucket

        owner = self.owner
        with owner.lock:
            st = owner.state
            n = len(st)
            rows = np.flatnonzero((owner.dirty[:n] != 0) & (st.index.bucket[:n] == self.bucket))
            ids = st.index.ids.ids
            records = [(ITEMS, ids[r].encode("utf-8"), payload) for r, payload in
                       zip(rows.tolist(), codec.encode_items(st, rows))]
            mine: dict = {}
            for name, c in list(owner.glob_dirty):
                if global_bucket(name, c, st.index.n_buckets) == self.bucket:
                    mine.setdefault(name, set()).add(c)
                    owner.glob_dirty.discard((name, c))
            if mine:
                small = {name for name in mine if st.arrays[name].nbytes <= codec.SMALL_GLOBAL}
                records += [(GLOBALS, name, payload) for name, payload in
                            codec.global_records(st.arrays, {k: (None if k in small else v) for k, v in mine.items()})]
            assert CHUNK == codec.CHUNK
            owner.dirty[rows] = 0
            meta = self.meta()
        return Staged(self.part, records, meta, self.store.head(self.part) + 1)


@dataclass
class Staged:
    """A generation taken but not yet written: its part, records, manifest metadata and
    the number it will have (the handle a snapshot returns names it)."""

    part: int
    records: list
    meta: dict
    gen: int

    def write(self, store: Store, fault=None) -> int:
        return write_staged(store, [self], fault)[0]


def write_staged(store: Store, staged: list[Staged], fault=None) -> list[int]:
    """Write staged generations in one transaction (one sync to disk)."""
    if not staged:
        return []
    return store.write_generations([(s.part, s.records, s.meta) for s in staged], fault, [s.gen for s in staged])


BUCKET_KEYS = ("model", "params", "seed", "n_buckets")


def bucket_meta_of(cfg) -> dict:
    """What an item bucket's generations record of the job (``RunConfig``)."""
    return {"model": cfg.model, "params": cfg.model_params().as_dict(), "seed": cfg.seed,
            "n_buckets": cfg.item_buckets}


def check_bucket_meta(written: dict, b: int, gen: int, meta: dict) -> None:
    for key in BUCKET_KEYS:
        if written.get(key) != meta.get(key):
            raise SettingsMismatch(f"item bucket {b}: generation {gen} was written with {key}={written.get(key)!r}, "
                                   f"but this job runs {key}={meta.get(key)!r}; restoring it would give wrong state. "
                                   "Run with the settings the checkpoint was made with (`recsys-stream inspect DIR "
                                   "--json` shows them), or start from a new --checkpoint-dir")


def restore_buckets(store: Store, owner, gens: dict[int, int], meta: dict | None, rollback: bool = True) -> None:
    """Load item buckets at the given generations into an owners' store (``hub.Hub``),
    rolling back what a crash left newer; every bucket's ids first, so rows (and neighbour
    keys) resolve, and the rows one process wrote come back as they were."""
    recs: list = []
    glob: list = []
    for b, gen in sorted(gens.items()):
        part = OWNER_PART + b
        head = store.head(part)
        if head < gen:
            raise CheckpointError(f"item bucket {b}: Bytewax's snapshot names generation {gen} but the store's newest "
                                  f"is {head}; the LMDB files are older than the recovery partitions")
        try:
            m = store.verify_generation(part, gen)
            if meta is not None:
                check_bucket_meta(m.meta, b, gen, meta)
            # a generation holds the rows changed since the one before: the rows read here
            # may come from older generations, each checked as it is decoded
            got = [(e.decode("utf-8"), p) for e, _g, p in store.scan(part, ITEMS, gen)]
            got_glob = [(e.decode(), p) for e, _g, p in store.scan(part, GLOBALS, gen)]
        except SettingsMismatch:
            raise
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}. {REFUSE_ITEMS}") from None
        if rollback:
            store.rollback(part, gen)
        recs += got
        glob += got_glob
    with owner.lock:
        codec.load_globals(owner.state.arrays, glob)
        load_items(owner.state, recs)
        owner._sync()
