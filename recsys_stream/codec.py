"""Rows of the user and item sides as checkpoint records (bytes), and back.

Item rows are process-local (``state.ItemIndex`` hands them out in order of first
appearance, differently in every process and run), so a record never holds one: it names
items by their 64-bit key (the hash of the id), and a restore maps keys back to rows.

- a user record (keyed by external id): every stored user row array's row, in name order
  (arrays of item rows, ``ArraySpec.items``, as uint64 keys, ``NO_ITEM`` for -1), then the
  user's history (u32 length, uint64 item keys in order);
- an item record (keyed by external id): the row it had in the writer's process (u32: a
  restore of one process's state gives the same rows back, so row-dependent choices such
  as sampled negatives replay exactly), every stored item row array's row, then for each
  neighbour pool (``state.NeighborPool``, in name order) u32 m and the row's m neighbour
  keys (uint64) and counts (float32);
- a global record per stored global array (keyed by name); arrays over 64 KiB are cut in
  chunks of 4,096 entries, and when the spec names a chunk-dirty array only the chunks
  changed since the last checkpoint are written.

The layout (names, dtypes, shapes) goes into every generation's manifest and is checked
on restore, so a record is never read with another layout. Two item ids with the same
64-bit key (a chance of about n^2 / 2^65 for n items) would be one item to a restore.
"""

from __future__ import annotations

import struct

import numpy as np

from .state import GLOBAL, ROW, ItemState, StateArrays, UserState

U32 = struct.Struct(">I")
CHUNK = 4096
SMALL_GLOBAL = 64 << 10
NO_ITEM = np.uint64(0xFFFFFFFFFFFFFFFF)


def layout(arrays: StateArrays, pools: dict | None = None) -> dict:
    out: dict = {"row": [], "global": []}
    for s in arrays.stored():
        out[s.kind].append([s.name, s.dtype, list(s.tail)] + (["items"] if s.items else []))
    if pools:
        out["pools"] = [[name, pools[name].cap_max] for name in sorted(pools)]
    return out


def row_size(spec) -> int:
    dtype = np.uint64 if spec.items else spec.dtype
    return int(np.dtype(dtype).itemsize * int(np.prod(spec.tail or (1,))))


def _keys(index, rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows)
    out = np.full(rows.shape, NO_ITEM, dtype=np.uint64)
    ok = rows >= 0
    out[ok] = index.key[rows[ok]]
    return out


# -- users --------------------------------------------------------------------------------


def encode_user(users: UserState, row: int, index) -> bytes:
    a = users.arrays
    parts = []
    for s in a.stored(ROW):
        v = a[s.name][row]
        parts.append((_keys(index, v) if s.items else v).tobytes())
    hist = users.items_of(row)
    parts.append(U32.pack(len(hist)))
    parts.append(_keys(index, hist).tobytes())
    return b"".join(parts)


def decode_user(users: UserState, payload: bytes, index) -> tuple[list, np.ndarray]:
    """(row values in stored order, history item rows) of a user record; items the index
    does not know are dropped from the history (and are -1 in item arrays)."""
    a = users.arrays
    values = []
    off = 0
    for s in a.stored(ROW):
        size = row_size(s)
        if s.items:
            keys = np.frombuffer(payload[off : off + size], dtype=np.uint64)
            values.append(index.rows_of_keys(keys).astype(s.dtype).reshape(s.tail))
        else:
            values.append(np.frombuffer(payload[off : off + size], dtype=s.dtype).reshape(s.tail))
        off += size
    (h,) = U32.unpack_from(payload, off)
    off += 4
    hist = index.rows_of_keys(np.frombuffer(payload[off : off + 8 * h], dtype=np.uint64))
    return values, hist[hist >= 0].astype(np.int32)


# -- items --------------------------------------------------------------------------------


def encode_items(items: ItemState, rows: np.ndarray) -> list[bytes]:
    """The item records of ``rows`` (the layout in the module docstring), with the work in
    arrays: Python runs once per record to cut it out of one buffer."""
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    if n == 0:
        return []
    a = items.arrays
    cols = [rows.astype(">u4").view(np.uint8).reshape(n, 4)]
    for s in a.stored(ROW):
        v = np.ascontiguousarray(a[s.name][rows])
        cols.append(v.view(np.uint8).reshape(n, -1))
    fixed = np.concatenate(cols, axis=1)
    width = fixed.shape[1]
    fixed_b = fixed.tobytes()
    pools = []
    for name in sorted(items.pools):
        nn, js, cs = items.pools[name].rows(a, rows, len(items))
        ends = np.cumsum(nn)
        pools.append((nn.tolist(), (ends - nn).tolist(), _keys(items.index, js).tobytes(),
                      cs.astype(np.float32).tobytes()))
    out = []
    pack = U32.pack
    for t in range(n):
        parts = [fixed_b[t * width:(t + 1) * width]]
        for nn, starts, kb, cb in pools:
            m, o = nn[t], starts[t]
            parts += [pack(m), kb[8 * o:8 * (o + m)], cb[4 * o:4 * (o + m)]]
        out.append(b"".join(parts))
    return out


def decode_items_into(items: ItemState, rows: np.ndarray, payloads: list) -> None:
    """Copy item records' values into ``rows`` (which must exist, one record each; the
    neighbours must be in the index already: load every item's id before any item's
    values). The work is in arrays: the records' fixed parts are joined into one buffer
    and each stored array's column is cut out of it at once; Python only slices each
    record's neighbour lists out of it (bytes, no copy of a temporary per entry)."""
    n = len(payloads)
    if n == 0:
        return
    rows = np.asarray(rows, dtype=np.int64)
    a = items.arrays
    specs = a.stored(ROW)
    sizes = [row_size(s) for s in specs]
    width = 4 + sum(sizes)
    lens = np.fromiter(map(len, payloads), dtype=np.int64, count=n)
    if int(lens.min()) < width:
        t = int(np.argmin(lens))
        raise ValueError(f"item record {t}: {int(lens[t])} bytes, the layout's fixed part needs {width}")
    if int(lens.max()) == width:
        fixed = np.frombuffer(b"".join(payloads), dtype=np.uint8).reshape(n, width)
    else:
        fixed = np.frombuffer(b"".join([p[:width] for p in payloads]), dtype=np.uint8).reshape(n, width)
    off = 4
    for s, size in zip(specs, sizes):
        col = np.ascontiguousarray(fixed[:, off : off + size]).view(s.dtype)
        a[s.name][rows] = col.reshape((n,) + tuple(s.tail))
        off += size
    pos = [width] * n
    unpack = U32.unpack_from
    for name in sorted(items.pools):
        ms, kparts, cparts = [], [], []
        for t, p in enumerate(payloads):
            o = pos[t]
            if o + 4 > len(p):
                raise ValueError(f"item record {t}: neighbour pool {name!r} missing (record of {len(p)} bytes)")
            (m,) = unpack(p, o)
            if o + 4 + 12 * m > len(p):
                raise ValueError(f"item record {t}: neighbour pool {name!r} runs past the record's end")
            ms.append(m)
            kparts.append(p[o + 4 : o + 4 + 8 * m])
            cparts.append(p[o + 4 + 8 * m : o + 4 + 12 * m])
            pos[t] = o + 4 + 12 * m
        m = np.asarray(ms, dtype=np.int64)
        keys = np.frombuffer(b"".join(kparts), dtype=np.uint64)
        cs = np.frombuffer(b"".join(cparts), dtype=np.float32)
        js = items.index.rows_of_keys(keys)
        ok = js >= 0
        rec = np.repeat(np.arange(n), m)
        items.pools[name].set_rows(a, len(items), rows, np.bincount(rec[ok], minlength=n), js[ok].astype(np.int32),
                                   cs[ok])


def item_row_of(payload: bytes) -> int:
    return U32.unpack_from(payload)[0]


def neighbor_keys(payload: bytes, layout_item: dict) -> list:
    """Per pool, the neighbour keys and counts of an item record (for digests)."""
    off = 4 + sum(row_size(_Spec(d, t)) for _n, d, t, *_r in layout_item["row"])
    out = []
    for _name, _cap in layout_item.get("pools", []):
        (m,) = U32.unpack_from(payload, off)
        off += 4
        keys = np.frombuffer(payload[off : off + 8 * m], dtype=np.uint64)
        cs = np.frombuffer(payload[off + 8 * m : off + 12 * m], dtype=np.float32)
        off += 12 * m
        out.append((keys, cs))
    return out


class _Spec:
    def __init__(self, dtype, tail, items=False):
        self.dtype, self.tail, self.items = dtype, tuple(tail), items


# -- globals ------------------------------------------------------------------------------


def global_records(arrays: StateArrays, names=None) -> list[tuple[bytes, bytes]]:
    """(name, payload) of every stored global array (changed chunks only, see above);
    ``names``: only these (name -> chunks to write, None for every chunk)."""
    out = []
    for s in arrays.stored(GLOBAL):
        if s.merge == "local" and names is not None:
            continue
        arr = arrays[s.name]
        if names is not None and s.name not in names:
            continue
        if arr.nbytes <= SMALL_GLOBAL:
            out.append((s.name.encode(), arr.tobytes()))
            continue
        if names is not None and names[s.name] is not None:
            chunks = sorted(names[s.name])
        else:
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
