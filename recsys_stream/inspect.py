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
    """shard -> the handle ({"shard", "gen"}) of the snapshot Bytewax would resume from."""
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
                                                     "WHERE step_id LIKE '%.shards' AND snap_epoch < ?", (resume,)))):
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
    return out


def describe(checkpoint_dir: str, user: str | None = None, with_digest: bool = False) -> dict:
    from .checkpoint import Checkpointer, digest
    from .models import MODELS
    from .routing import UserRouter
    from .shard import Shard, ShardSettings

    from pathlib import Path

    from .ckdir import read_meta

    if not os.path.isdir(checkpoint_dir):
        raise CheckpointError(f"{checkpoint_dir}: no such directory")
    meta = read_meta(Path(checkpoint_dir))
    store = Store(os.path.join(checkpoint_dir, "state.lmdb"), readonly=True)
    try:
        handles = committed_handles(checkpoint_dir)
        shards = {}
        gens = {}
        for shard in sorted(set(handles) | set(store.shards())):
            committed = handles.get(shard, {}).get("gen", 0)
            newest = store.head(shard)
            info = {"committed_generation": committed, "newest_generation": newest}
            if committed:
                m = store.verify_generation(shard, committed)
                info["users"] = sum(1 for _ in store.scan(shard, USERS, committed, verify=False))
                info["items"] = sum(1 for _ in store.scan(shard, b"I", committed, verify=False))
                info["model"] = m.meta["model"]
                gens[shard] = committed
            shards[str(shard)] = info
        out = {"checkpoint_dir": checkpoint_dir, "n_shards": meta["n_shards"], "model": meta["model"],
               "shards": shards}
        if user is not None:
            shard = UserRouter(meta["n_shards"]).shard_of(user)
            if shard not in gens:
                raise CheckpointError(f"shard {shard} (of user {user!r}) has no committed generation")
            m = store.manifest(shard, gens[shard])
            cls = MODELS[m.meta["model"]].params_type
            hl = m.meta["half_life_days"]
            settings = ShardSettings(model=m.meta["model"], params=cls(**m.meta["params"]), seed=m.meta["seed"],
                                     recent=m.meta["recent"], half_life_days=float(hl))
            sh = Shard(shard, settings)
            ck = Checkpointer(sh, store)
            sh.checkpointer = ck
            ck.view_generation(gens[shard])
            rec = sh.recommend(user)
            row = sh.users.ids.get(user)
            norms = {}
            if row >= 0:
                ua = sh.users.arrays
                for name, spec in ua.specs.items():
                    if spec.stored and spec.dtype.startswith("float") and spec.tail:
                        norms[name] = float(np.linalg.norm(ua[name][row].astype(np.float64)))
            out["user"] = {"id": user, "shard": shard, "known": rec["known"], "version": rec["version"],
                           "norms": norms, "list": rec["items"], "scores": rec["scores"]}
        if with_digest:
            d, counts = digest(store, gens)
            out["digest"] = d
            out["digest_counts"] = counts
        return out
    finally:
        store.close()
