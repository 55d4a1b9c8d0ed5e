"""The key-value backends under ``storage.Store``: ordered byte keys in transactions.

``Store`` writes the checkpoint's semantics (generations, manifests, versioned keys, the
collection of old versions, rollback) once, over this interface; a backend only keeps
its keys in order and makes a write transaction all or nothing. Two backends:
``LmdbKV`` (a checkpoint directory's ``state.lmdb``, the files as they have always been)
and ``MemoryKV`` (a sorted list and a dict: tests, and runs that keep nothing on disk).

The interface
-------------
``kv.begin(write=False)`` starts a transaction, used as a context manager: leaving the
block commits it, or aborts it when an exception leaves the block (a write
transaction's writes then never happened); ``commit()`` and ``abort()`` do it by hand
(leaving the block then does nothing more).
A transaction has ``get(key)`` (the value or None), ``put(key, value)``,
``delete(key)`` (whether the key was there), ``items(start, prefix)`` and
``keys(start, prefix)`` (the entries from the first key ``>= start`` in key order, while
keys start with ``prefix``) and ``before(key)`` (the entry with the greatest key
``< key``, or None). A write transaction sees its own writes, other transactions only
committed ones; one write transaction at a time. ``kv.error(exc, doing)`` is the
``CheckpointError`` a backend's own exception stands for (None for any other), and
``kv.reopen(readonly)`` closes the handle and opens the same store again. Keys are 1 to
``MAX_KEY`` bytes (LMDB's limit; the memory backend keeps it, so both refuse alike).
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left, bisect_right, insort
from itertools import takewhile
from typing import Iterator

import lmdb

MAX_KEY = 511


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, truncated, incompatible or unwritable."""


class Txn:
    """A transaction as a context manager (commit on leaving, abort on an exception)."""

    def __enter__(self) -> "Txn":
        return self

    def __exit__(self, etype, exc, tb) -> bool:
        if etype is None:
            self.commit()
        else:
            self.abort()
        return False

    # what every backend's transaction has (see the module's docstring)
    def get(self, key: bytes) -> bytes | None:
        raise NotImplementedError

    def put(self, key: bytes, value: bytes) -> None:
        raise NotImplementedError

    def delete(self, key: bytes) -> bool:
        raise NotImplementedError

    def items(self, start: bytes = b"", prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        raise NotImplementedError

    def keys(self, start: bytes = b"", prefix: bytes = b"") -> Iterator[bytes]:
        raise NotImplementedError

    def before(self, key: bytes) -> tuple[bytes, bytes] | None:
        raise NotImplementedError

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        raise NotImplementedError


# -- LMDB ---------------------------------------------------------------------------


class _LmdbTxn(Txn):
    def __init__(self, txn):
        self.txn = txn
        self.done = False

    def get(self, key: bytes) -> bytes | None:
        return self.txn.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        self.txn.put(key, value)

    def delete(self, key: bytes) -> bool:
        return self.txn.delete(key)

    def items(self, start: bytes = b"", prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        cur = self.txn.cursor()
        ok = cur.set_range(max(start, prefix))
        while ok:
            key = cur.key()
            if not key.startswith(prefix):
                return
            yield key, cur.value()
            ok = cur.next()

    def keys(self, start: bytes = b"", prefix: bytes = b"") -> Iterator[bytes]:
        # lmdb's own key iterator (no values read); a checkpoint calls this once per record
        cur = self.txn.cursor()
        if not cur.set_range(max(start, prefix)):
            return iter(())
        return takewhile(lambda key: key.startswith(prefix), cur.iternext(keys=True, values=False))

    def before(self, key: bytes) -> tuple[bytes, bytes] | None:
        cur = self.txn.cursor()
        ok = cur.prev() if cur.set_range(key) else cur.last()
        return (cur.key(), cur.value()) if ok else None

    def commit(self) -> None:
        if not self.done:
            self.done = True
            self.txn.commit()

    def abort(self) -> None:
        if not self.done:
            self.done = True
            self.txn.abort()


class LmdbKV:
    """The LMDB environment of a checkpoint directory (opened, or created when writable)."""

    def __init__(self, path: str, map_size: int = 64 << 30, readonly: bool = False):
        self.path = path
        self.map_size = map_size
        self.readonly = readonly
        data = os.path.join(path, "data.mdb")
        if readonly and not os.path.exists(data):
            raise CheckpointError(f"{path}: no LMDB checkpoint here (data.mdb missing)")
        if os.path.exists(data) and os.path.getsize(data) < 2 * 4096:
            raise CheckpointError(f"{data}: truncated ({os.path.getsize(data)} bytes); refusing to open it")
        lockf = os.path.join(path, "lock.mdb")
        writable = os.access(path, os.W_OK) and (not os.path.exists(lockf) or os.access(lockf, os.W_OK))
        if not readonly and os.path.isdir(path) and not (writable and (not os.path.exists(data)
                                                                       or os.access(data, os.W_OK))):
            raise CheckpointError(f"{path}: not writable by this user (or a read-only file system); the job writes "
                                  "its checkpoints there")
        try:
            os.makedirs(path, exist_ok=True)
            # read-only and not writable (a backup, a read-only mount): no lock file can be taken;
            # reading without one is safe when no writer is running there
            self.env = lmdb.open(path, map_size=map_size, subdir=True, readonly=readonly,
                                 lock=writable or not readonly, max_readers=64, metasync=True, sync=True)
            # A file shorter than the pages its meta page says are in use would fault (SIGBUS)
            # when those pages are read: refuse it here instead.
            need = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
            have = os.path.getsize(data)
            if have < need:
                self.env.close()
                raise CheckpointError(f"{data}: truncated ({have:,} bytes, but its pages reach {need:,}); "
                                      "refusing to open it. Restore the directory from a backup or start from "
                                      "an empty one")
            with self.env.begin() as txn:  # touch the tree: a damaged file fails here, not later
                txn.cursor().first()
        except lmdb.Error as exc:
            raise CheckpointError(f"{path}: the LMDB environment cannot be opened ({exc}); it is damaged or "
                                  "truncated. Restore the directory from a backup or start from an empty one") from None

    def begin(self, write: bool = False) -> _LmdbTxn:
        return _LmdbTxn(self.env.begin(write=write))

    def close(self) -> None:
        self.env.close()

    def reopen(self, readonly: bool = False) -> "LmdbKV":
        self.close()
        return LmdbKV(self.path, self.map_size, readonly)

    def error(self, exc: BaseException, doing: tuple[str, str, str]) -> CheckpointError | None:
        """``doing``: (while what, refused what, what was not done), e.g. ("checkpointing",
        "the checkpoint", "nothing of this checkpoint was written")."""
        what, refused, undone = doing
        if isinstance(exc, lmdb.MapFullError):
            return CheckpointError(f"{self.path}: the LMDB map is full; {undone}. Raise --checkpoint-map-gb (the file "
                                   "grows only as used)")
        if isinstance(exc, lmdb.DiskError):
            return CheckpointError(f"{self.path}: disk error while {what} ({exc}); {undone}")
        if isinstance(exc, lmdb.ReadonlyError):
            return CheckpointError(f"{self.path}: the checkpoint is read-only (its files or the file system); {undone}")
        if isinstance(exc, lmdb.Error):
            return CheckpointError(f"{self.path}: LMDB refused {refused} ({exc}); {undone}")
        return None


# -- memory -------------------------------------------------------------------------


class _Refused(Exception):
    """The memory backend refusing an operation (read-only, a bad key, closed)."""


class _ReadOnly(_Refused):
    """A write to a memory store opened read-only."""


class _Data:
    """What the handles of one memory store share: the committed keys (sorted) and
    values, and the writer's lock."""

    def __init__(self):
        self.keys: list[bytes] = []
        self.vals: dict[bytes, bytes] = {}
        self.lock = threading.Lock()
        self.writer: int | None = None  # the thread holding the lock


class _MemTxn(Txn):
    """Reads see the committed data; a write transaction's changes wait in an overlay
    (value, or None for deleted) until ``commit`` applies them all at once."""

    def __init__(self, data: _Data, write: bool):
        self.d = data
        self.write = write
        self.over: dict[bytes, bytes | None] = {}
        self.okeys: list[bytes] = []  # the overlay's keys, sorted
        self.done = False

    def _writable(self, key: bytes) -> None:
        if self.done:
            raise _Refused("the transaction is finished")
        if not self.write:
            raise _Refused("a read transaction cannot write")
        if not 0 < len(key) <= MAX_KEY:
            raise _Refused(f"a key of {len(key)} bytes (1 to {MAX_KEY})")

    def get(self, key: bytes) -> bytes | None:
        if key in self.over:
            return self.over[key]
        return self.d.vals.get(key)

    def put(self, key: bytes, value: bytes) -> None:
        key = bytes(key)
        self._writable(key)
        if key not in self.over:
            insort(self.okeys, key)
        self.over[key] = bytes(value)

    def delete(self, key: bytes) -> bool:
        key = bytes(key)
        self._writable(key)
        if self.get(key) is None:
            return False
        if key not in self.over:
            insort(self.okeys, key)
        self.over[key] = None
        return True

    def _next(self, key: bytes, inclusive: bool) -> bytes | None:
        """The first key present ``>= key`` (``> key``), the overlay over the data. Found
        again from the last key at each step, so writes while iterating are safe."""
        find = bisect_left if inclusive else bisect_right
        keys, okeys = self.d.keys, self.okeys
        i, j = find(keys, key), find(okeys, key)
        while True:
            a = keys[i] if i < len(keys) else None
            b = okeys[j] if j < len(okeys) else None
            if b is None or (a is not None and a < b):
                return a
            if a == b:
                i += 1
            if self.over[b] is not None:
                return b
            j += 1

    def items(self, start: bytes = b"", prefix: bytes = b"") -> Iterator[tuple[bytes, bytes]]:
        for key in self.keys(start, prefix):
            value = self.get(key)
            if value is not None:
                yield key, value

    def keys(self, start: bytes = b"", prefix: bytes = b"") -> Iterator[bytes]:
        key = self._next(max(start, prefix), True)
        while key is not None and key.startswith(prefix):
            yield key
            key = self._next(key, False)

    def before(self, key: bytes) -> tuple[bytes, bytes] | None:
        keys, okeys = self.d.keys, self.okeys
        i, j = bisect_left(keys, key) - 1, bisect_left(okeys, key) - 1
        while True:
            a = keys[i] if i >= 0 else None
            b = okeys[j] if j >= 0 else None
            if b is None or (a is not None and a > b):
                return None if a is None else (a, self.d.vals[a])
            if a == b:
                i -= 1
            if self.over[b] is not None:
                return b, self.over[b]
            j -= 1

    def commit(self) -> None:
        if self.done:
            return
        self.done = True
        if not self.write:
            return
        try:
            d, over = self.d, self.over
            gone = [k for k in self.okeys if over[k] is None and k in d.vals]
            added = [k for k in self.okeys if over[k] is not None and k not in d.vals]
            for k in self.okeys:  # values first, keys after: a key listed always has its value
                if over[k] is not None:
                    d.vals[k] = over[k]
            if len(gone) + len(added) > 16:
                dead = set(gone)
                keys = [k for k in d.keys if k not in dead]
                keys.extend(added)
                keys.sort()  # two sorted runs: merged in linear time
                d.keys = keys
            else:
                for k in gone:
                    del d.keys[bisect_left(d.keys, k)]
                for k in added:
                    insort(d.keys, k)
            for k in gone:
                del d.vals[k]
        finally:
            self._release()

    def abort(self) -> None:
        if not self.done:
            self.done = True
            if self.write:
                self._release()

    def _release(self) -> None:
        self.over, self.okeys = {}, []
        self.d.writer = None
        self.d.lock.release()


class MemoryKV:
    """An ordered map in memory. One write transaction at a time (another thread's waits
    for it, as with LMDB); a read sees what was committed, including commits made while
    it reads (no snapshot: unlike LMDB)."""

    def __init__(self, readonly: bool = False, _data: _Data | None = None):
        self.path = ":memory:"
        self.readonly = readonly
        self.closed = False
        self._data = _Data() if _data is None else _data

    def begin(self, write: bool = False) -> _MemTxn:
        if self.closed:
            raise _Refused("the store is closed")
        if write:
            if self.readonly:
                raise _ReadOnly("opened read-only")
            d = self._data
            if d.writer == threading.get_ident():
                raise _Refused("this thread already has a write transaction open")
            d.lock.acquire()
            d.writer = threading.get_ident()
        return _MemTxn(self._data, write)

    def close(self) -> None:
        self.closed = True

    def reopen(self, readonly: bool = False) -> "MemoryKV":
        self.close()
        return MemoryKV(readonly, self._data)

    def error(self, exc: BaseException, doing: tuple[str, str, str]) -> CheckpointError | None:
        if isinstance(exc, _Refused):
            _what, refused, undone = doing
            if isinstance(exc, _ReadOnly):
                return CheckpointError(f"{self.path}: the checkpoint is read-only (opened so); {undone}")
            return CheckpointError(f"{self.path}: the store refused {refused} ({exc}); {undone}")
        return None
