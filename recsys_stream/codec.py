"""Rows of the user and item sides as checkpoint records (bytes), and back.

- a user record (keyed by external id): every stored user row array's row, in name
  order, then the user's history (u32 length, int32 item rows in order);
- an item record (keyed by external id): its row number (u32), every stored item row
  array's row, then for each neighbour pool (``state.NeighborPool``, in name order) u32 m
  and the row's m neighbour rows (int32) and counts (float32);
- a global record per stored global array (keyed by name); arrays over 64 KiB are cut in
  chunks of 4,096 entries, and when the spec names a chunk-dirty array only the chunks
  changed since the last checkpoint are written.

The layout (names, dtypes, shapes) goes into every generation's manifest and is checked
on restore, so a record is never read with another layout.
"""

from __future__ import annotations

import struct

import numpy as np

from .state import GLOBAL, ROW, ItemState, StateArrays, UserState

U32 = struct.Struct(">I")
CHUNK = 4096
SMALL_GLOBAL = 64 << 10


def layout(arrays: StateArrays, pools: dict | None = None) -> dict:
    out: dict = {"row": [], "global": []}
    for s in arrays.stored():
        out[s.kind].append([s.name, s.dtype, list(s.tail)])
    if pools:
        out["pools"] = [[name, pools[name].cap_max] for name in sorted(pools)]
    return out


def row_size(spec) -> int:
    return int(np.dtype(spec.dtype).itemsize * int(np.prod(spec.tail or (1,))))


# -- users --------------------------------------------------------------------------------


def encode_user(users: UserState, row: int) -> bytes:
    a = users.arrays
    parts = [a[s.name][row].tobytes() for s in a.stored(ROW)]
    hist = users.items_of(row)
    parts.append(U32.pack(len(hist)))
    parts.append(hist.astype(np.int32).tobytes())
    return b"".join(parts)


def decode_user(users: UserState, payload: bytes) -> tuple[list, np.ndarray]:
    """(row values in stored order, history item rows) of a user record."""
    a = users.arrays
    values = []
    off = 0
    for s in a.stored(ROW):
        size = row_size(s)
        values.append(np.frombuffer(payload[off : off + size], dtype=s.dtype).reshape(s.tail))
        off += size
    (h,) = U32.unpack_from(payload, off)
    off += 4
    return values, np.frombuffer(payload[off : off + 4 * h], dtype=np.int32)


# -- items --------------------------------------------------------------------------------


def encode_item(items: ItemState, row: int) -> bytes:
    a = items.arrays
    parts = [U32.pack(row)]
    parts += [a[s.name][row].tobytes() for s in a.stored(ROW)]
    for name in sorted(items.pools):
        js, cs = items.pools[name].row(a, row)
        parts += [U32.pack(len(js)), js.tobytes(), cs.tobytes()]
    return b"".join(parts)


def item_row_of(payload: bytes) -> int:
    return U32.unpack_from(payload)[0]


def decode_item_into(items: ItemState, payload: bytes) -> None:
    """Copy an item record's values into its row (the row must exist)."""
    a = items.arrays
    row = item_row_of(payload)
    off = 4
    for s in a.stored(ROW):
        size = row_size(s)
        a[s.name][row] = np.frombuffer(payload[off : off + size], dtype=s.dtype).reshape(s.tail)
        off += size
    for name in sorted(items.pools):
        (m,) = U32.unpack_from(payload, off)
        off += 4
        js = np.frombuffer(payload[off : off + 4 * m], dtype=np.int32)
        cs = np.frombuffer(payload[off + 4 * m : off + 8 * m], dtype=np.float32)
        off += 8 * m
        items.pools[name].set_row(a, len(items), row, js, cs)


# -- globals ------------------------------------------------------------------------------


def global_records(arrays: StateArrays) -> list[tuple[bytes, bytes]]:
    """(name, payload) of every stored global array (changed chunks only, see above)."""
    out = []
    for s in arrays.stored(GLOBAL):
        arr = arrays[s.name]
        if arr.nbytes <= SMALL_GLOBAL:
            out.append((s.name.encode(), arr.tobytes()))
            continue
        dirty = arrays.arrays.get(s.dirty) if s.dirty else None
        n_chunks = -(-len(arr) // CHUNK)
        chunks = range(n_chunks) if dirty is None else np.flatnonzero(dirty[:n_chunks])
        for c in chunks:
            out.append((f"{s.name}#{int(c)}".encode(), arr[c * CHUNK : (c + 1) * CHUNK].tobytes()))
    return out


def clear_global_dirt(arrays: StateArrays) -> None:
    for s in arrays.stored(GLOBAL):
        if s.dirty:
            arrays[s.dirty][:] = 0


def load_globals(arrays: StateArrays, records) -> None:
    """Load ``(name, payload)`` records of globals that ``arrays`` declares (others are
    the other side's)."""
    for name, payload in records:
        base, _, c = name.partition("#")
        if base not in arrays or not arrays.specs[base].stored:
            continue
        arr = arrays[base]
        v = np.frombuffer(payload, dtype=arr.dtype)
        if c:
            arr[int(c) * CHUNK : int(c) * CHUNK + len(v)] = v
        else:
            arr[...] = v.reshape(arr.shape)
