"""Reading a checkpoint directory from outside: which generation Bytewax's last committed
snapshot names per shard, what the shards hold, one user's vectors and list, a digest."""

from __future__ import annotations

import glob
import io
import os
import pickle
import sqlite3

import numpy as np

from .storage import USERS, CheckpointError, Store


class _HandleUnpickler(pickle.Unpickler):
    """Snapshots of the shard step are small dicts; refuse anything else."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a snapshot")


def resume_epoch(conns: list) -> int | None:
    """The epoch Bytewax resumes from, computed as Bytewax 0.21 does: the newest
    execution's slowest worker frontier (a worker with no frontier row counts as at the
    execution's resume epoch)."""
    exs = [row for c in conns for row in c.execute("SELECT ex_num, worker_count, resume_epoch FROM exs")]
    if not exs:
        return None
    ex_num, workers, resume = max(exs)
    fronts: dict[int, int] = {}
    for c in conns:
        for w, f in c.execute("SELECT worker_index, worker_frontier FROM fronts WHERE ex_num = ?", (ex_num,)):
            fronts[w] = max(fronts.get(w, f), f)
    return min(max(fronts.get(w, resume), resume) for w in range(workers))


def _connect(path: str):
    """A normal connection, so SQLite can read a write-ahead log a killed worker left; on a
    read-only directory (a backup, a read-only mount), a read-only one, or an immutable one
    when there is no write-ahead log to read."""
    wal = path + "-wal"
    uris = [f"file:{path}?mode=ro"]
    if not (os.path.exists(wal) and os.path.getsize(wal) > 0):
        uris.append(f"file:{path}?immutable=1")
    last = None
    for target, uri in [(path, False)] + [(u, True) for u in uris]:
        if not uri and not (os.access(os.path.dirname(path), os.W_OK) and os.access(path, os.W_OK)):
            continue
        try:
            c = sqlite3.connect(target, uri=uri)
            c.execute("SELECT count(*) FROM exs").fetchone()
            return c
        except sqlite3.Error as exc:
            last = exc
    raise CheckpointError(f"{path}: cannot read Bytewax's recovery partition ({last}); on a read-only copy with a "
                          "write-ahead log left by a killed worker, copy the directory somewhere writable first. A "
                          "corrupt partition: restore the directory from a backup")


def _query(parts, fn):
    try:
        return fn()
    except sqlite3.Error as exc:
        where = os.path.dirname(parts[0])
        raise CheckpointError(f"{where}: cannot read Bytewax's recovery partitions ({exc}); on a read-only copy "
                              "with a write-ahead log left by a killed worker, copy the directory somewhere "
                              "writable first. A corrupt partition: restore the directory from a backup") from None


def committed_handles(checkpoint_dir: str) -> dict[int, dict]:
    """part -> the handle of the snapshot Bytewax would resume from: ``{"shard", "gen"}``
    for a user shard (part: its index), ``{"bucket", "gen"}`` for an item bucket (part:
    ``checkpoint.OWNER_PART + bucket``)."""
    parts = sorted(glob.glob(os.path.join(checkpoint_dir, "recovery", "part-*.sqlite3")))
    if not parts:
        raise CheckpointError(f"{checkpoint_dir}: no Bytewax recovery partitions (recovery/part-*.sqlite3)")
    conns = [_connect(p) for p in parts]
    try:
        resume = _query(parts, lambda: resume_epoch(conns))
        if resume is None:
            return {}
        best: dict = {}
        for c in conns:
            for _step, key, epoch, blob in _query(parts, lambda: list(c.execute("SELECT step_id, state_key, snap_epoch, ser_change FROM snaps "
                                                     "WHERE (step_id LIKE '%.shards' OR step_id LIKE '%.items') AND snap_epoch < ?", (resume,)))):
                if key not in best or epoch > best[key][0]:
                    best[key] = (epoch, blob)
    finally:
        for c in conns:
            c.close()
    out = {}
    for key, (_epoch, blob) in best.items():
        if blob is None:
            continue
        handle = _HandleUnpickler(io.BytesIO(blob)).load()
        if isinstance(handle, dict) and "shard" in handle:
            out[int(handle["shard"])] = handle
        elif isinstance(handle, dict) and "bucket" in handle:
            from .checkpoint import OWNER_PART

            out[OWNER_PART + int(handle["bucket"])] = handle
    return out


def _item_side(store: Store, bucket_gens: dict[int, int], shard_meta: dict | None):
    """The item side as the owners' committed generations hold it (read only)."""
    from .checkpoint import OWNER_PART, restore_buckets
    from .hub import OwnerStore
    from .models import MODELS
    from .state import ItemIndex, ItemState

    metas = [store.manifest(OWNER_PART + b, g).meta for b, g in sorted(bucket_gens.items())]
    m = metas[0] if metas else (shard_meta or {})
    n_buckets = int(m.get("n_buckets", 1))
    model = MODELS[m["model"]](MODELS[m["model"]].params_type(**m["params"]))
    hl = float((shard_meta or {}).get("half_life_days", 7.0))
    state = ItemState(model.item_specs(), hl, int(m["seed"]), model.item_pools(), ItemIndex(n_buckets))
    owner = OwnerStore(state, model)
    if bucket_gens:
        restore_buckets(store, owner, bucket_gens, None, rollback=False)
    return state, n_buckets


def _shard_settings(meta: dict):
    from .models import MODELS
    from .shard import ShardSettings

    cls = MODELS[meta["model"]].params_type
    return ShardSettings(model=meta["model"], params=cls(**meta["params"]), seed=meta["seed"], recent=meta["recent"],
                         half_life_days=float(meta["half_life_days"]))


def _view_shard(store: Store, shard: int, gen: int, items):
    from .checkpoint import Checkpointer
    from .shard import Shard

    m = store.manifest(shard, gen)
    own_items = bool(m.meta.get("items", True))
    sh = Shard(shard, _shard_settings(m.meta), items=None if own_items else items)
    ck = Checkpointer(sh, store, with_items=own_items)
    sh.checkpointer = ck
    ck.view_generation(gen)
    return sh


def _item_info(items, n_buckets: int, item: str) -> dict:
    from .events import stable_hash64

    bucket = int(stable_hash64(item) % n_buckets)
    row = items.index.ids.get(item)
    out = {"id": item, "bucket": bucket, "known": row >= 0}
    if row < 0:
        return out
    a = items.arrays
    out["events"] = int(a["iev"][row])
    out["active"] = bool(a["active"][row])
    out["log_popularity"] = float(a["pop"][row])
    norms = {}
    for name, spec in a.specs.items():
        if spec.stored and spec.kind == "row" and spec.dtype.startswith("float") and spec.tail:
            norms[name] = float(np.linalg.norm(a[name][row].astype(np.float64)))
    out["norms"] = norms
    ids = items.index.ids.ids
    for name, pool in items.pools.items():
        js, cs = pool.row(a, row)
        order = np.lexsort((js, -cs))[:20]
        out[f"neighbors.{name}"] = [[ids[int(js[t])], float(cs[t])] for t in order]
    return out


def describe(checkpoint_dir: str, user: str | None = None, with_digest: bool = False, item: str | None = None,
             counts: bool = False) -> dict:
    """What a checkpoint directory holds, as of the generations Bytewax's committed
    snapshots name: per user shard and item bucket, their generations and sizes; with
    ``user``, that user's vectors and list; with ``item``, what the item's owner holds; with
    ``counts``, every user's and item's event count; with ``with_digest``, the digest."""
    from .checkpoint import OWNER_PART, digest
    from .routing import UserRouter

    from pathlib import Path

    from .ckdir import read_meta

    if not os.path.isdir(checkpoint_dir):
        raise CheckpointError(f"{checkpoint_dir}: no such directory")
    meta = read_meta(Path(checkpoint_dir))
    store = Store(os.path.join(checkpoint_dir, "state.lmdb"), readonly=True)
    try:
        handles = committed_handles(checkpoint_dir)
        shards, buckets = {}, {}
        gens = {}
        shard_meta = None
        for part in sorted(set(handles) | set(store.shards())):
            committed = handles.get(part, {}).get("gen", 0)
            newest = store.head(part)
            info = {"committed_generation": committed, "newest_generation": newest}
            if committed:
                m = store.verify_generation(part, committed)
                if part < OWNER_PART:
                    info["users"] = sum(1 for _ in store.scan(part, USERS, committed, verify=False))
                    shard_meta = shard_meta or m.meta
                info["items"] = sum(1 for _ in store.scan(part, b"I", committed, verify=False))
                info["model"] = m.meta["model"]
                gens[part] = committed
            if part < OWNER_PART:
                shards[str(part)] = info
            else:
                buckets[str(part - OWNER_PART)] = info
        out = {"checkpoint_dir": checkpoint_dir, "n_shards": meta["n_shards"],
               "n_buckets": meta.get("n_buckets"), "model": meta["model"], "shards": shards, "buckets": buckets}
        bucket_gens = {p - OWNER_PART: g for p, g in gens.items() if p >= OWNER_PART}
        if user is not None or item is not None or counts:
            if not gens:
                raise CheckpointError(f"{checkpoint_dir}: no committed generation to read")
            items, n_buckets = _item_side(store, bucket_gens, shard_meta)
        if user is not None:
            shard = UserRouter(meta["n_shards"]).shard_of(user)
            if shard not in gens:
                raise CheckpointError(f"shard {shard} (of user {user!r}) has no committed generation")
            sh = _view_shard(store, shard, gens[shard], items)
            rec = sh.recommend(user)
            row = sh.users.ids.get(user)
            norms = {}
            if row >= 0:
                ua = sh.users.arrays
                for name, spec in ua.specs.items():
                    if spec.stored and spec.dtype.startswith("float") and spec.tail:
                        norms[name] = float(np.linalg.norm(ua[name][row].astype(np.float64)))
            out["user"] = {"id": user, "shard": shard, "known": rec["known"], "version": rec["version"],
                           "events": int(sh.users.arrays["uev"][row]) if row >= 0 else 0,
                           "norms": norms, "list": rec["items"], "scores": rec["scores"]}
        if item is not None:
            out["item"] = _item_info(items, n_buckets, item)
        if counts:
            users: dict = {}
            for part, g in sorted(gens.items()):
                if part >= OWNER_PART:
                    continue
                sh = _view_shard(store, part, g, items)
                stored = [e.decode("utf-8") for e, _g, _p in store.scan(part, USERS, g, verify=False)]
                sh.checkpointer.load_users(stored)
                ids = sh.users.ids.ids
                uev = sh.users.arrays["uev"]
                for r in range(len(sh.users.ids)):
                    if ids[r] is not None:
                        users[ids[r]] = int(uev[r])
            n = len(items)
            iids = items.index.ids.ids
            iev = items.arrays["iev"]
            out["counts"] = {"users": users, "items": {iids[r]: int(iev[r]) for r in range(n) if iev[r] > 0}}
        if with_digest:
            d, dcounts = digest(store, gens)
            out["digest"] = d
            out["digest_counts"] = dcounts
        return out
    finally:
        store.close()
