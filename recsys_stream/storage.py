"""Checkpoint storage: versioned records, one generation per Bytewax snapshot.

Written once over a small key-value interface (``kv``: transactions, get, put, delete,
ordered cursors), with two backends: LMDB (``Store(path)``, the checkpoint directory's
``state.lmdb``) and an ordered map in memory (``Store.memory()``); tests/test_store_suite.py
runs one suite over both.

Layout
------
One LMDB environment (``<checkpoint-dir>/state.lmdb``) holds every shard. A record's key
is ``shard (u16) | table (u8) | len(entity) (u16) | entity | generation (u64)``, all
big-endian, so the versions of one entity sit together, oldest first. Tables:

- ``U`` one record per user (external id), ``I`` per item, ``G`` per global array (or
  chunk of one), ``E`` the emission bookkeeping (pending lists, de-duplication ids),
  ``M`` the manifest of each generation, ``K`` the keys each generation wrote (so a
  rollback or a check touches only those); ``H`` (not versioned) names the head
  generation and ``F`` the oldest generation still complete.

A value is ``FORMAT (u16) | payload length (u32) | payload | crc32 (u32)`` over the
header and payload: every record is checked when read.

Long entities
-------------
LMDB keys are at most 511 bytes, and an id of 256 characters is up to 1,024 bytes of
UTF-8. An entity of more than ``MAX_PLAIN_ENTITY`` (256) bytes is keyed by its 32-byte
BLAKE2b digest instead, with the length field's high bit set (``LONG``), and its record's
payload starts with the entity itself (``u16 length | entity``) before the payload
proper; ``get``, ``latest``, ``scan`` and every caller see the real entity and payload.
Any id the input accepts is storable (format 3; format 2 had no long keys).

Generations
-----------
A checkpoint writes generation ``g`` = head + 1: the records of every entity that
changed since ``g - 1``, then the manifest of ``g`` (its record count and the xor of
their checksums), then the head, in one LMDB transaction. The state as of ``g`` is, per
entity, its newest version ``<= g``. Versions older than what generation ``g - KEEP``
needs are deleted as new ones are written, so the last ``KEEP`` generations stay
restorable. Restoring to ``g`` (the generation Bytewax's committed snapshot names)
first deletes every version newer than ``g``: a crash after LMDB committed ``g + 1`` but
before Bytewax committed its epoch rolls back exactly.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from hashlib import blake2b
from typing import Iterator

import orjson

from .kv import CheckpointError, LmdbKV, MemoryKV  # noqa: F401  CheckpointError: imported from here by all

FORMAT = 5
# Entities longer than this (bytes) are keyed by their digest (see "Long entities").
MAX_PLAIN_ENTITY = 256
LONG = 0x8000
_DIGEST = 32
# Generations kept restorable: Bytewax commits an epoch after its snapshots are written
# and inputs wait for that commit, so it resumes from the newest generation or the one
# before. A restore older than what is kept is refused (``FLOOR``): never served from a
# partly collected generation.
KEEP = 3
HEAD = b"H"
FLOOR = b"F"
USERS, ITEMS, GLOBALS, EMIT, MANIFEST, INDEX = b"U", b"I", b"G", b"E", b"M", b"K"

_HDR = struct.Struct(">HI")
_CRC = struct.Struct(">I")
_GEN = struct.Struct(">Q")
_SHARD = struct.Struct(">H")
_LEN = struct.Struct(">H")


def encode(payload: bytes) -> bytes:
    head = _HDR.pack(FORMAT, len(payload))
    return head + payload + _CRC.pack(zlib.crc32(payload, zlib.crc32(head)))


def decode(value: bytes, where) -> bytes:
    """The payload of a stored record, checked (format, length, checksum); ``where`` (a
    string, or a function giving it: built only for an error) names the record."""
    if len(value) < _HDR.size + _CRC.size:
        raise CheckpointError(f"{_where(where)}: record truncated ({len(value)} bytes)")
    fmt, n = _HDR.unpack_from(value)
    if fmt != FORMAT:
        raise CheckpointError(f"{_where(where)}: written in checkpoint format {fmt}; this build reads format {FORMAT}")
    if len(value) != _HDR.size + n + _CRC.size:
        raise CheckpointError(f"{_where(where)}: record truncated (header says {n} payload bytes, {len(value)} in all)")
    payload = value[_HDR.size : _HDR.size + n]
    (crc,) = _CRC.unpack_from(value, _HDR.size + n)
    if crc != zlib.crc32(payload, zlib.crc32(value[: _HDR.size])):
        raise CheckpointError(f"{_where(where)}: checksum mismatch (the record is corrupt)")
    return payload


def _where(where) -> str:
    return where() if callable(where) else where


def crc_of(value: bytes) -> int:
    return _CRC.unpack_from(value, len(value) - _CRC.size)[0]


def is_long(entity: bytes) -> bool:
    return len(entity) > MAX_PLAIN_ENTITY


BUCKET_PART = 0x8000  # parts from here on are item buckets (``checkpoint.OWNER_PART``)


def part_name(part: int) -> str:
    """A part as users read it: a user shard, or an item bucket."""
    return f"item bucket {part - BUCKET_PART}" if part >= BUCKET_PART else f"shard {part}"


def entity_key(entity: bytes) -> bytes:
    """The entity's part of a key: ``len | entity``, or ``LONG|32 | digest`` when long."""
    if len(entity) > MAX_PLAIN_ENTITY:
        return _LEN.pack(LONG | _DIGEST) + blake2b(entity, digest_size=_DIGEST).digest()
    return _LEN.pack(len(entity)) + entity


def entity_prefix(shard: int, table: bytes, entity: bytes) -> bytes:
    return _SHARD.pack(shard) + table + entity_key(entity)


def version_key(shard: int, table: bytes, entity: bytes, gen: int) -> bytes:
    return entity_prefix(shard, table, entity) + _GEN.pack(gen)


def split_key(key: bytes) -> tuple[int, bytes, bytes, int]:
    """(shard, table, the key's entity bytes, generation): for a long entity, its digest
    (the real entity is in the record, see ``unwrap``)."""
    shard = _SHARD.unpack_from(key)[0]
    table = key[2:3]
    (n,) = _LEN.unpack_from(key, 3)
    n &= ~LONG
    entity = key[5 : 5 + n]
    gen = _GEN.unpack_from(key, 5 + n)[0]
    return shard, table, entity, gen


def key_is_long(key: bytes) -> bool:
    return bool(_LEN.unpack_from(key, 3)[0] & LONG)


def wrap(entity: bytes, payload: bytes) -> bytes:
    """The stored payload of an entity's record (the entity first when it is long)."""
    if len(entity) > MAX_PLAIN_ENTITY:
        return _LEN.pack(len(entity)) + entity + payload
    return payload


def unwrap(key: bytes, payload: bytes, where) -> tuple[bytes, bytes]:
    """(entity, payload) of a record read at ``key`` (its decoded payload)."""
    if not key_is_long(key):
        return split_key(key)[2], payload
    if len(payload) < _LEN.size:
        raise CheckpointError(f"{_where(where)}: record of a long entity truncated")
    (n,) = _LEN.unpack_from(payload)
    entity = payload[_LEN.size : _LEN.size + n]
    if len(entity) != n or blake2b(entity, digest_size=_DIGEST).digest() != split_key(key)[2]:
        raise CheckpointError(f"{_where(where)}: the entity in the record does not match its key's digest (corrupt)")
    return entity, payload[_LEN.size + n :]


def _raw_entity(key: bytes, value: bytes) -> bytes:
    """The entity of a record without checking it (counting, listing)."""
    if not key_is_long(key):
        return split_key(key)[2]
    (n,) = _LEN.unpack_from(value, _HDR.size)
    return value[_HDR.size + _LEN.size : _HDR.size + _LEN.size + n]


@dataclass
class Manifest:
    gen: int
    records: int
    crc_xor: int
    meta: dict

    def to_bytes(self) -> bytes:
        return orjson.dumps({"gen": self.gen, "records": self.records, "crc_xor": self.crc_xor, "meta": self.meta})

    @classmethod
    def from_bytes(cls, b: bytes) -> "Manifest":
        d = orjson.loads(b)
        return cls(d["gen"], d["records"], d["crc_xor"], d["meta"])


class _Abort(Exception):
    """Leave a write transaction without committing it."""


_WRITING = ("checkpointing", "the checkpoint", "nothing of this checkpoint was written")
_ROLLING_BACK = ("rolling back", "the rollback", "nothing was rolled back")


class Store:
    """A checkpoint store: the layout above over a key-value backend (``kv``).
    ``Store(path)`` opens (or creates) the LMDB environment of a checkpoint directory;
    ``Store.memory()`` is one in memory; ``Store.over(kv)`` one over any backend."""

    def __init__(self, path: str, map_size: int = 64 << 30, readonly: bool = False):
        self._attach(LmdbKV(path, map_size, readonly))

    @classmethod
    def over(cls, kv) -> "Store":
        st = cls.__new__(cls)
        st._attach(kv)
        return st

    @classmethod
    def memory(cls, readonly: bool = False) -> "Store":
        return cls.over(MemoryKV(readonly))

    def _attach(self, kv) -> None:
        self.kv = kv
        self.path = kv.path

    @property
    def readonly(self) -> bool:
        return self.kv.readonly

    def close(self) -> None:
        self.kv.close()

    def reopen(self, readonly: bool = False) -> "Store":
        """Close this handle and open the same store again (read-only, or not)."""
        return Store.over(self.kv.reopen(readonly))

    def reading(self):
        """A read transaction (a context manager), for ``latest``."""
        return self.kv.begin()

    # -- reading ------------------------------------------------------------------

    def head(self, shard: int) -> int:
        with self.kv.begin() as txn:
            v = txn.get(_SHARD.pack(shard) + HEAD)
        return 0 if v is None else _GEN.unpack(v)[0]

    def floor(self, shard: int) -> int:
        """The oldest generation still complete (older ones were partly collected)."""
        with self.kv.begin() as txn:
            v = txn.get(_SHARD.pack(shard) + FLOOR)
        return 0 if v is None else _GEN.unpack(v)[0]

    def shards(self) -> list[int]:
        """The parts that have a head generation, in order."""
        out = []
        with self.kv.begin() as txn:
            start = b""
            while True:
                key = next(txn.keys(start), None)
                if key is None:
                    break
                shard = _SHARD.unpack_from(key)[0]
                if txn.get(_SHARD.pack(shard) + HEAD) is not None:
                    out.append(shard)
                if shard == 0xFFFF:
                    break
                start = _SHARD.pack(shard + 1)
        return out

    def manifest(self, shard: int, gen: int) -> Manifest | None:
        with self.kv.begin() as txn:
            v = txn.get(version_key(shard, MANIFEST, b"", gen))
        if v is None:
            return None
        return Manifest.from_bytes(decode(v, f"{part_name(shard)} manifest of generation {gen}"))

    def latest(self, txn, shard: int, table: bytes, entity: bytes, gen: int) -> tuple[int, bytes] | None:
        """(generation, raw value) of the entity's newest version <= gen, or None (``txn``
        from ``reading``). The value decodes (``decode``) to the entity's payload, for long
        entities too (their record is checked and unwrapped here, and handed back as a
        record of the payload alone)."""
        prefix = entity_prefix(shard, table, entity)
        hit = txn.before(prefix + _GEN.pack(gen + 1))
        if hit is None:
            return None
        key, value = hit
        if not key.startswith(prefix) or len(key) != len(prefix) + 8:
            return None
        g = _GEN.unpack_from(key, len(prefix))[0]
        if key_is_long(key):
            where = f"{part_name(shard)} {table.decode()} {entity[:40]!r}... generation {g}"
            _e, payload = unwrap(key, decode(value, where), where)
            value = encode(payload)
        return g, value

    def get(self, shard: int, table: bytes, entity: bytes, gen: int) -> bytes | None:
        with self.kv.begin() as txn:
            hit = self.latest(txn, shard, table, entity, gen)
        if hit is None:
            return None
        return decode(hit[1], f"{part_name(shard)} {table.decode()} {entity[:60]!r} generation {hit[0]}")

    def scan(self, shard: int, table: bytes, gen: int, verify: bool = True,
             verified: int | None = None) -> Iterator[tuple[bytes, int, bytes]]:
        """(entity, generation, payload) of every entity's newest version <= gen, in key
        order; with ``verify=False`` the payload is the raw value, unchecked (for counting);
        ``verified``: a generation ``verify_generation`` has just checked record by record,
        whose records are not checked again."""
        start = _SHARD.pack(shard) + table
        with self.kv.begin() as txn:
            best = None
            for key, value in txn.items(start, start):
                g = _GEN.unpack_from(key, len(key) - _GEN.size)[0]
                if best is not None and best[0] != key[: -_GEN.size]:
                    yield self._checked(shard, table, best, verify, verified)
                    best = None
                if g <= gen:
                    best = (key[: -_GEN.size], g, key, value)
            if best is not None:
                yield self._checked(shard, table, best, verify, verified)

    def _checked(self, shard, table, best, verify, verified=None):
        _prefix, g, key, value = best
        if not verify:
            return _raw_entity(key, value), g, value

        def where():
            return f"{part_name(shard)} {table.decode()} {split_key(key)[2][:60]!r} generation {g}"

        # a record of the generation ``verify_generation`` has just checked: only its frame goes
        payload = value[_HDR.size : len(value) - _CRC.size] if g == verified else decode(value, where)
        entity, payload = unwrap(key, payload, where)
        return entity, g, payload

    def verify_generation(self, shard: int, gen: int) -> Manifest:
        """Check the manifest of ``gen`` against the records written in it."""
        if gen < self.floor(shard):
            raise CheckpointError(f"{part_name(shard)}: generation {gen} is older than the oldest generation kept "
                                  f"({self.floor(shard)}); its records were partly collected")
        m = self.manifest(shard, gen)
        if m is None:
            raise CheckpointError(f"{part_name(shard)}: generation {gen} has no manifest (it was never completed or "
                                  "was removed)")
        n = 0
        x = 0
        with self.kv.begin() as txn:
            keys = self._index(txn, shard, gen)

            def where(key):
                _s, table, entity, g = split_key(key)
                return f"{part_name(shard)} {table.decode()} {entity!r} generation {g}"

            for key in keys:
                value = txn.get(key)
                if value is None:
                    _s, table, entity, _g = split_key(key)
                    raise CheckpointError(f"{part_name(shard)}: generation {gen} lost its record {table.decode()} "
                                          f"{entity!r}")
                decode(value, lambda: where(key))  # noqa: B023 (called at once, on an error)
                n += 1
                x ^= crc_of(value)
        if n != m.records or x != m.crc_xor:
            raise CheckpointError(f"{part_name(shard)}: generation {gen} does not match its manifest ({n} records found, "
                                  f"{m.records} written)")
        return m

    def _index(self, txn, shard: int, gen: int) -> list[bytes]:
        """The keys generation ``gen`` wrote (its ``K`` record)."""
        v = txn.get(version_key(shard, INDEX, b"", gen))
        if v is None:
            raise CheckpointError(f"{part_name(shard)}: generation {gen} has no key index")
        blob = decode(v, f"{part_name(shard)} key index of generation {gen}")
        out = []
        off = 0
        while off < len(blob):
            (n,) = _LEN.unpack_from(blob, off)
            out.append(blob[off + 2 : off + 2 + n])
            off += 2 + n
        return out

    # -- writing ------------------------------------------------------------------

    def write_generation(self, shard: int, records: list[tuple[bytes, bytes, bytes]], meta: dict,
                         fault=None) -> int:
        """Write ``(table, entity, payload)`` records as the next generation; returns it."""
        return self.write_generations([(shard, records, meta)], fault)[0]

    def write_generations(self, parts: list[tuple[int, list, dict]], fault=None,
                          expect: list[int] | None = None) -> list[int]:
        """Write the next generation of each ``(part, records, meta)`` in one transaction
        (one sync to disk for all); returns their numbers. ``expect``: the numbers the
        caller promised (a ``CheckpointError`` if the store disagrees, nothing written)."""
        gens = []
        try:
            with self.kv.begin(write=True) as txn:
                for t, (shard, records, meta) in enumerate(parts):
                    hv = txn.get(_SHARD.pack(shard) + HEAD)
                    gen = 1 if hv is None else _GEN.unpack(hv)[0] + 1
                    if expect is not None and expect[t] != gen:
                        raise _Abort(f"{part_name(shard)}: generation {expect[t]} was promised but the store's next "
                                     f"is {gen} (another writer?); nothing of this checkpoint was written")
                    x = 0
                    index = []
                    for j, (table, entity, payload) in enumerate(records):
                        value = encode(wrap(entity, payload))
                        prefix = entity_prefix(shard, table, entity)
                        key = prefix + _GEN.pack(gen)
                        txn.put(key, value)
                        index.append(_LEN.pack(len(key)) + key)
                        x ^= crc_of(value)
                        self._gc_prefix(txn, prefix, gen)
                        if fault is not None and t == 0 and j == len(records) // 2:
                            fault("checkpoint.mid-write")
                    man = Manifest(gen, len(records), x, meta)
                    txn.put(version_key(shard, MANIFEST, b"", gen), encode(man.to_bytes()))
                    txn.put(version_key(shard, INDEX, b"", gen), encode(b"".join(index)))
                    self._gc(txn, shard, MANIFEST, b"", gen)
                    self._gc(txn, shard, INDEX, b"", gen)
                    txn.put(_SHARD.pack(shard) + HEAD, _GEN.pack(gen))
                    fv = txn.get(_SHARD.pack(shard) + FLOOR)
                    floor = max(0 if fv is None else _GEN.unpack(fv)[0], gen - KEEP)
                    txn.put(_SHARD.pack(shard) + FLOOR, _GEN.pack(floor))
                    gens.append(gen)
        except _Abort as exc:
            raise CheckpointError(str(exc)) from None
        except Exception as exc:
            err = self.kv.error(exc, _WRITING)
            if err is None:
                raise
            raise err from None
        return gens

    def _gc(self, txn, shard: int, table: bytes, entity: bytes, gen: int) -> None:
        """Delete versions no restorable generation (>= gen - KEEP) needs."""
        self._gc_prefix(txn, entity_prefix(shard, table, entity), gen)

    @staticmethod
    def _gc_prefix(txn, prefix: bytes, gen: int) -> None:
        """``_gc`` of the entity whose keys start with ``prefix``."""
        horizon = gen - KEEP
        if horizon <= 0:
            return
        older = []
        for key in txn.keys(prefix, prefix):
            if len(key) != len(prefix) + 8:
                break
            g = _GEN.unpack_from(key, len(prefix))[0]
            if g > horizon:
                break
            older.append(key)
        # keep the newest version <= horizon: it is the state as of the oldest kept generation
        for key in older[:-1]:
            txn.delete(key)

    def rollback(self, shard: int, gen: int) -> int:
        """Delete every version newer than ``gen`` and make ``gen`` the head; returns how
        many. Newer generations' key indexes say what to delete (``gen == 0``: everything)."""
        removed = 0
        try:
            with self.kv.begin(write=True) as txn:
                doomed: list[bytes] = []
                if gen == 0:
                    part = _SHARD.pack(shard)
                    doomed = [key for key in txn.keys(part, part) if key[2:3] not in (HEAD, FLOOR)]
                else:
                    for g in self._generations(txn, shard):
                        if g > gen:
                            doomed += self._index(txn, shard, g)
                            doomed += [version_key(shard, MANIFEST, b"", g), version_key(shard, INDEX, b"", g)]
                for key in doomed:
                    if txn.delete(key):
                        removed += 1
                if gen > 0:
                    txn.put(_SHARD.pack(shard) + HEAD, _GEN.pack(gen))
                else:
                    txn.delete(_SHARD.pack(shard) + HEAD)
                    txn.delete(_SHARD.pack(shard) + FLOOR)
        except Exception as exc:
            err = self.kv.error(exc, _ROLLING_BACK)
            if err is None:
                raise
            raise err from None
        return removed

    def drop_shard(self, shard: int) -> int:
        """Delete everything of a shard (a state built without a snapshot starts clean)."""
        return self.rollback(shard, 0)

    def generations(self, shard: int) -> list[int]:
        """The generations of a shard that have a manifest, oldest first."""
        with self.kv.begin() as txn:
            return self._generations(txn, shard)

    def _generations(self, txn, shard: int) -> list[int]:
        prefix = entity_prefix(shard, MANIFEST, b"")
        return [_GEN.unpack_from(key, len(prefix))[0] for key in txn.keys(prefix, prefix)]
