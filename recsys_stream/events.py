"""Interaction events, moved in columnar batches.

An interaction has a user id, an item id, a timestamp (epoch seconds), an event type and
a value (the rating, or a weight), and may carry context features. Ids are strings: a
numeric id is its decimal string, so 42 and "42" are one user.

Python touches a batch a few times (parse, route, map ids); Numba kernels then run per
event over its arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Sequence

import numpy as np

# Event types: the code is what kernels and arrays carry.
EVENT_TYPES: dict[str, int] = {
    "rating": 0,
    "view": 1,
    "click": 2,
    "add_to_cart": 3,
    "purchase": 4,
    "like": 5,
    "dislike": 6,
}
TYPE_NAMES = {v: k for k, v in EVENT_TYPES.items()}
RATING = EVENT_TYPES["rating"]
# Typed events that mean "the user liked it" for the like-model's label.
POSITIVE_TYPES = np.array([EVENT_TYPES[t] for t in ("click", "add_to_cart", "purchase", "like")], dtype=np.int8)

# Limits that make an id or a context "sane" (longer input is rejected, not truncated).
MAX_ID_LEN = 256
MAX_CONTEXT_FEATURES = 32


def stable_hash64(text: str) -> int:
    """A 64-bit hash of a string that is the same in every process and release.

    Python's ``hash()`` is salted per process; this is BLAKE2b, truncated.
    """
    return int.from_bytes(blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")


def normalize_id(value) -> str:
    """Ids are strings; an integral number is its decimal string (42, 42.0 and "42" agree)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        raise TypeError("a boolean is not an id")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    raise TypeError(f"expected a string or integer id, got {type(value).__name__}")


def context_hashes(ctx: dict) -> list[int]:
    """Hash a context mapping into feature hashes ``key=value`` (numbers bucketed by value)."""
    out = []
    for key in sorted(ctx):
        val = ctx[key]
        if isinstance(val, (list, tuple)):
            for v in val:
                out.append(stable_hash64(f"ctx:{key}={v}"))
        else:
            out.append(stable_hash64(f"ctx:{key}={val}"))
    return out


@dataclass
class EventBatch:
    """A columnar batch of events; every array has one entry per event.

    ``seq`` is the event's position in the replay (files) or in its partition (Kafka, where
    it is the offset); ``part``/``offset`` name where the event came from (-1/line number
    for files). Context features are CSR: event e's hashes are
    ``ctx_hash[ctx_ptr[e]:ctx_ptr[e+1]]``.
    """

    user: np.ndarray  # object: str
    item: np.ndarray  # object: str
    ts: np.ndarray  # float64
    etype: np.ndarray  # int8
    value: np.ndarray  # float32
    seq: np.ndarray  # int64
    part: np.ndarray  # int32
    offset: np.ndarray  # int64
    ctx_ptr: np.ndarray = field(default=None)  # int64, len n+1
    ctx_hash: np.ndarray = field(default=None)  # uint64
    eid: np.ndarray | None = None  # object: event id or None (de-duplication)
    ingest: np.ndarray | None = None  # float64: wall clock when the event entered the flow

    def __post_init__(self):
        if self.ctx_ptr is None:
            self.ctx_ptr = np.zeros(len(self.user) + 1, dtype=np.int64)
            self.ctx_hash = np.zeros(0, dtype=np.uint64)

    def __len__(self) -> int:
        return len(self.user)

    @classmethod
    def empty(cls) -> "EventBatch":
        return cls.from_columns([], [], [], [], [], [], [], [])

    @classmethod
    def from_columns(cls, user, item, ts, etype, value, seq, part, offset, contexts: Sequence | None = None):
        u = np.empty(len(user), dtype=object)
        u[:] = list(user)
        it = np.empty(len(item), dtype=object)
        it[:] = list(item)
        b = cls(
            u,
            it,
            np.asarray(ts, dtype=np.float64),
            np.asarray(etype, dtype=np.int8),
            np.asarray(value, dtype=np.float32),
            np.asarray(seq, dtype=np.int64),
            np.asarray(part, dtype=np.int32),
            np.asarray(offset, dtype=np.int64),
        )
        if contexts is not None and any(contexts):
            ptr = np.zeros(len(contexts) + 1, dtype=np.int64)
            hashes: list[int] = []
            for e, hs in enumerate(contexts):
                if hs:
                    hashes.extend(hs)
                ptr[e + 1] = len(hashes)
            b.ctx_ptr = ptr
            b.ctx_hash = np.array(hashes, dtype=np.uint64)
        return b

    def take(self, idx: np.ndarray) -> "EventBatch":
        """The events at positions ``idx`` (in that order)."""
        idx = np.asarray(idx, dtype=np.int64)
        out = EventBatch(
            self.user[idx],
            self.item[idx],
            self.ts[idx],
            self.etype[idx],
            self.value[idx],
            self.seq[idx],
            self.part[idx],
            self.offset[idx],
        )
        if self.eid is not None:
            out.eid = self.eid[idx]
        if self.ingest is not None:
            out.ingest = self.ingest[idx]
        if len(self.ctx_hash):
            lens = (self.ctx_ptr[1:] - self.ctx_ptr[:-1])[idx]
            ptr = np.zeros(len(idx) + 1, dtype=np.int64)
            np.cumsum(lens, out=ptr[1:])
            starts = self.ctx_ptr[:-1][idx]
            gather = np.repeat(starts - ptr[:-1], lens) + np.arange(ptr[-1], dtype=np.int64)
            out.ctx_ptr = ptr
            out.ctx_hash = self.ctx_hash[gather]
        return out

    def slice(self, start: int, stop: int) -> "EventBatch":
        return self.take(np.arange(start, min(stop, len(self)), dtype=np.int64))

    @staticmethod
    def concat(batches: Sequence["EventBatch"]) -> "EventBatch":
        if len(batches) == 1:
            return batches[0]
        if not batches:
            return EventBatch.empty()
        out = EventBatch(
            np.concatenate([b.user for b in batches]),
            np.concatenate([b.item for b in batches]),
            np.concatenate([b.ts for b in batches]),
            np.concatenate([b.etype for b in batches]),
            np.concatenate([b.value for b in batches]),
            np.concatenate([b.seq for b in batches]),
            np.concatenate([b.part for b in batches]),
            np.concatenate([b.offset for b in batches]),
        )
        if any(b.eid is not None for b in batches):
            out.eid = np.concatenate([b.eid if b.eid is not None else np.full(len(b), None, dtype=object)
                                      for b in batches])
        if any(b.ingest is not None for b in batches):
            out.ingest = np.concatenate([b.ingest if b.ingest is not None else np.full(len(b), np.nan)
                                         for b in batches])
        if any(len(b.ctx_hash) for b in batches):
            ptrs = [np.zeros(1, dtype=np.int64)]
            base = 0
            for b in batches:
                ptrs.append(b.ctx_ptr[1:] + base)
                base += int(b.ctx_ptr[-1])
            out.ctx_ptr = np.concatenate(ptrs)
            out.ctx_hash = np.concatenate([b.ctx_hash for b in batches])
        return out

    def sort_by_time(self) -> "EventBatch":
        """Event-time order, stable for ties (file order among equal timestamps)."""
        order = np.argsort(self.ts, kind="stable")
        if np.all(order[1:] > order[:-1]):
            return self
        return self.take(order)
