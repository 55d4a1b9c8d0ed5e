"""The checkpoint directory: creation, its trust boundary, its metadata and its locks.

    DIR/                mode 0700, owned by the job's user
      checkpoint.json   format, model, shards, recovery partitions, cluster size at creation
      recovery/         Bytewax's recovery partitions (SQLite; snapshots are *pickles*)
      state.lmdb/       the model state (``storage``)
      .lock             serialises the first start of the processes of a cluster
      .cluster-<N>.lock held shared by every process of a cluster of N processes
      .worker-<id>.lock held by the process with that --process-id

Trust boundary: Bytewax unpickles its recovery snapshots, so whoever can write DIR can run
code as the worker. The directory is created owner-only, and a start is refused when DIR,
its sub-folders or their files are owned by another user or writable by group or others
(see docs/operations.md). LMDB records carry checksums (corruption), not signatures
(tampering).

Locks: two writers of the same shards would interleave their generations, so a process
is refused when another live process holds the same process id (``.worker-<id>.lock``)
or belongs to a cluster of another size (``.cluster-<N>.lock``): without the second lock,
a process of a cluster of two (``--process-id 1``) would pass beside a single process
(id 0) writing the same shards, and the directory could no longer be resumed. Locks are
``flock``s: the kernel drops them when a process dies, so a killed worker never leaves a
stale lock behind.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import stat
import time
from pathlib import Path

from .storage import FORMAT, CheckpointError

META = "checkpoint.json"
META_KEYS = ("format", "n_shards", "model", "recovery_partitions")


class UnsafeCheckpointDir(CheckpointError):
    """The directory or a file in it can be written by someone else than the job's user."""


def _who(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return str(uid)


def check_trusted(root: Path) -> None:
    """Refuse a directory (or its sub-folders and their files) owned by another user or
    writable by group or others: Bytewax unpickles what is there."""
    me = os.geteuid()
    paths = [root]
    for sub in ("recovery", "state.lmdb"):
        d = root / sub
        if d.is_dir() and not d.is_symlink():
            paths.append(d)
    entries = []
    for d in paths:
        try:
            entries += [d / name for name in os.listdir(d)]
        except OSError:
            pass
    for p in paths + [e for e in entries if e not in paths]:
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeCheckpointDir(f"{p} is a symbolic link; a checkpoint directory must hold its own files "
                                      "(Bytewax unpickles them: see docs/operations.md, trust boundary)")
        if st.st_uid != me:
            raise UnsafeCheckpointDir(f"{p} is owned by {_who(st.st_uid)}, not by {_who(me)} who runs the job; "
                                      "whoever can write the checkpoint directory can run code in the worker "
                                      f"(docs/operations.md, trust boundary): chown -R {_who(me)} {root}")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise UnsafeCheckpointDir(f"{p} is writable by {'others' if st.st_mode & stat.S_IWOTH else 'its group'} "
                                      f"(mode {stat.S_IMODE(st.st_mode):o}); whoever can write the checkpoint "
                                      "directory can run code in the worker (docs/operations.md, trust boundary): "
                                      f"chmod -R go-w {root}")


def check_writable(root: Path, command: str = "run") -> None:
    """A clear refusal for a directory this user cannot write (permissions, read-only mount)."""
    probe = root / f".probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        why = "a read-only file system" if exc.errno == errno.EROFS else (exc.strerror or str(exc))
        raise CheckpointError(f"--checkpoint-dir {root}: not writable ({why}); `{command}` writes its checkpoints "
                              "there. Use a writable directory (to look at a read-only copy: recsys-stream "
                              "inspect DIR)") from None


def read_meta(root: Path) -> dict:
    """``checkpoint.json``, checked: a clear error naming the file when it is unusable."""
    path = root / META
    hint = ("Restore it from a backup of the directory, or start from an empty --checkpoint-dir (the state "
            "here cannot be resumed without it)")
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{root}: not a checkpoint directory ({META} missing)") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        meta = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated ({len(text)} bytes, not valid JSON: {exc}). "
                              f"{hint}") from None
    if not isinstance(meta, dict) or any(k not in meta for k in META_KEYS):
        raise CheckpointError(f"{path}: corrupt (expected an object with {', '.join(META_KEYS)}). {hint}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {meta.get('format')}; this build reads format {FORMAT}. "
                              "Run the release that wrote it, or start from an empty --checkpoint-dir")
    if not isinstance(meta["n_shards"], int) or meta["n_shards"] < 1:
        raise CheckpointError(f"{path}: corrupt (n_shards {meta['n_shards']!r}). {hint}")
    return meta


def _write_meta(path: Path, meta: dict) -> None:
    """Write ``checkpoint.json`` atomically (a crash leaves the old file or the new one)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(meta))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def make_dir(root: Path) -> None:
    """Create the directory owner-only (parents as usual)."""
    if root.is_symlink():
        raise UnsafeCheckpointDir(f"--checkpoint-dir {root} is a symbolic link; name the directory itself")
    if not root.exists():
        try:
            root.parent.mkdir(parents=True, exist_ok=True)
            root.mkdir(mode=0o700)
            os.chmod(root, 0o700)  # whatever the umask
        except FileExistsError:
            pass
        except OSError as exc:
            raise CheckpointError(f"--checkpoint-dir {root}: cannot create it ({exc.strerror or exc})") from None
    elif not root.is_dir():
        raise CheckpointError(f"--checkpoint-dir {root}: exists and is not a directory")


def prepare_checkpoint_dir(cfg) -> tuple[int, Path]:
    """Create ``<dir>/recovery`` (Bytewax's partitions) and ``<dir>/checkpoint.json`` on
    first start; returns (number of shards, recovery directory). The number of shards is
    fixed when the directory is made: later starts may use other worker counts, and the
    shards move between workers. Refuses an untrusted, unwritable or corrupt directory."""
    from bytewax.recovery import init_db_dir

    root = Path(cfg.checkpoint_dir)
    make_dir(root)
    check_trusted(root)
    check_writable(root)
    lock_path = root / ".lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    with os.fdopen(fd, "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # processes of one cluster may start together
        meta_path = root / META
        rec = root / "recovery"
        if meta_path.exists():
            meta = read_meta(root)
            if meta.get("model") != cfg.model:
                raise CheckpointError(f"{root}: made for model {meta.get('model')!r}, this job runs {cfg.model!r}")
            if not rec.is_dir() or not glob.glob(str(rec / "part-*.sqlite3")):
                raise CheckpointError(f"{rec}: Bytewax's recovery partitions are missing; the checkpoint cannot be "
                                      "resumed. Restore the directory from a backup or start from an empty one")
            if "n_buckets" in meta and int(meta["n_buckets"]) != cfg.item_buckets:
                raise CheckpointError(f"{root}: made with --item-buckets {meta['n_buckets']}, this job runs "
                                      f"{cfg.item_buckets}; the number of item buckets is fixed for a checkpoint's "
                                      "life (run with the same, or start from a new --checkpoint-dir)")
            return int(meta["n_shards"]), rec
        n_shards = cfg.n_shards()
        if cfg.cluster_size() > cfg.recovery_partitions:
            raise CheckpointError(f"{cfg.cluster_size()} workers need at least as many recovery partitions; "
                                  f"raise --recovery-partitions (now {cfg.recovery_partitions})")
        if not rec.exists():
            rec.mkdir(mode=0o700)
            init_db_dir(rec, cfg.recovery_partitions)
            for p in rec.iterdir():
                os.chmod(p, 0o600)
        _write_meta(meta_path, {"format": FORMAT, "n_shards": n_shards, "n_buckets": cfg.item_buckets, "model": cfg.model,
                                "recovery_partitions": cfg.recovery_partitions,
                                "processes": max(len(cfg.address_list()), 1), "created": time.time()})
        return n_shards, rec


def recovery_dir(cfg) -> Path | None:
    return Path(cfg.checkpoint_dir) / "recovery" if cfg.checkpoint_dir else None


def recovery_config(cfg):
    """Bytewax's recovery store: the source positions and each shard's handle."""
    from bytewax.recovery import RecoveryConfig

    rec = recovery_dir(cfg)
    return None if rec is None else RecoveryConfig(rec)


_HELD_LOCKS: list = []


def _open_lock(path: Path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    return os.fdopen(fd, "r+")


def lock_checkpoint_dir(cfg) -> None:
    """Hold, for the life of the process, ``.cluster-<N>.lock`` shared (N: processes of
    this cluster) and ``.worker-<process id>.lock`` exclusive; refuse a start beside a
    live process of a cluster of another size, or with the same process id."""
    if not cfg.checkpoint_dir:
        return
    root = Path(cfg.checkpoint_dir)
    n = max(len(cfg.address_list()), 1)
    mine = _open_lock(root / f".cluster-{n}.lock")
    fcntl.flock(mine, fcntl.LOCK_SH)  # before looking at the others: two racing starts cannot both pass
    for other in sorted(root.glob(".cluster-*.lock")):
        if other.name == f".cluster-{n}.lock":
            continue
        f = _open_lock(other)
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            m = other.name[len(".cluster-"):-len(".lock")]
            mine.close()
            raise CheckpointError(f"{root} is in use by a live cluster of {m} process(es); this one is a cluster of "
                                  f"{n} (--addresses). Two clusters would write the same shards: stop the other "
                                  "first, or use another --checkpoint-dir") from None
        finally:
            f.close()  # releases the probe's lock, if taken
    pid = cfg.process_id or 0
    f = _open_lock(root / f".worker-{pid}.lock")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        mine.close()
        raise CheckpointError(f"{root} is in use by another worker process (pid {holder}) with process id {pid}; "
                              "stop it first") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _HELD_LOCKS.extend([mine, f])


def preflight(cfg) -> None:
    """Before Bytewax starts: check what a resume will read, so that a user's mistake is
    refused with one line instead of a worker's panic. Every shard's generation named by
    Bytewax's committed snapshot must exist, have been written with this job's settings
    (``SettingsMismatch``, with or without --checkpoint-fallback) and, without
    --checkpoint-fallback, verify against its manifest. Reads only; the worker checks
    again as it restores."""
    if not cfg.checkpoint_dir:
        return
    from .checkpoint import (OWNER_PART, REFUSE_ITEMS, REFUSE_USERS, Checkpointer, bucket_meta_of,
                             check_bucket_meta)
    from .inspect import committed_handles
    from .settings import shard_settings
    from .shard import Shard
    from .storage import Store

    root = Path(cfg.checkpoint_dir)
    handles = committed_handles(str(root))
    if not handles:
        return
    lmdb_dir = root / "state.lmdb"
    if not (lmdb_dir / "data.mdb").exists():
        raise CheckpointError(f"{root}: Bytewax's recovery partitions name checkpoint generations, but "
                              f"{lmdb_dir} holds none (deleted or replaced?). Restore the directory from a backup "
                              "or start from an empty --checkpoint-dir")
    st = Store(str(lmdb_dir), map_size=int(cfg.checkpoint_map_gb * (1 << 30)), readonly=True)
    try:
        ss = shard_settings(cfg)
        for part, handle in sorted(handles.items()):
            gen = int(handle["gen"])
            shard = part
            what = f"shard {shard}" if part < OWNER_PART else f"item bucket {part - OWNER_PART}"
            if handle.get("format") != FORMAT:
                raise CheckpointError(f"{root}: the snapshot of {what} was written in checkpoint format "
                                      f"{handle.get('format')}; this build reads format {FORMAT}")
            head = st.head(part)
            if head < gen:
                raise CheckpointError(f"{what}: Bytewax's snapshot names generation {gen} but the store's "
                                      f"newest is {head}; the LMDB files are older than the recovery partitions")
            if part >= OWNER_PART:
                # item buckets are restored whole before the flow starts: verified there, and
                # their settings checked against the job's (checkpoint.restore_buckets)
                m = st.manifest(part, gen)
                if m is None:
                    raise CheckpointError(f"{what}: generation {gen} has no manifest; the checkpoint cannot be "
                                          "resumed. Restore the directory from a backup or start from an empty one")
                check_bucket_meta(m.meta, part - OWNER_PART, gen, bucket_meta_of(cfg))
                _verify(st, part, gen, REFUSE_ITEMS)
                continue
            try:
                m = st.manifest(shard, gen)
            except CheckpointError:
                if cfg.checkpoint_fallback:
                    continue
                raise
            if m is None:
                if cfg.checkpoint_fallback:
                    continue
                raise CheckpointError(f"shard {shard}: generation {gen} has no manifest. {REFUSE_USERS}")
            Checkpointer(Shard(shard, ss), st).check_meta(m.meta, gen)
            if not cfg.checkpoint_fallback:
                _verify(st, shard, gen, REFUSE_USERS)
    finally:
        st.close()


def _verify(st, part: int, gen: int, refusal: str) -> None:
    """Generation ``gen`` of ``part`` against its manifest; a failure says what to do."""
    try:
        st.verify_generation(part, gen)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}. {refusal}") from None
