"""A call of the prequential kernel (``kernels.driver.prequential``) from Python.

A shard hands the kernel its events as arrays (``Events``: user and item rows, values,
labels, times, flags; see ``kernels.layout.Batch``) and reads back what the kernel wrote
(``Outputs``: predictions, top-k positions, rankings and lists; ``kernels.layout.Out``).
``run`` makes the call, growing the model's pools and resuming where the kernel stopped
when they run out of room; ``read`` is the read path (one read-only event, ``PEEK``, or
the popularity list for a user nobody knows); ``first_recs`` reads which items a batch
recommended for the first time (evaluation bookkeeping). Nothing here knows about key
groups, event filters or checkpoints: that is the shard's part.
"""

from __future__ import annotations

from collections import namedtuple

import numpy as np

from . import scratch
from .kernels.driver import prequential
from .kernels.explain import SRC_POPULAR
from .kernels.layout import EXPLAIN, PEEK, RANK, WANT_LIST, Batch, Out
from .records import list_items

# what a kernel call hands back (see ``kernels.layout.Out``), as the numpy arrays Python reads
Outputs = namedtuple("Outputs", ["pred", "pos", "topk", "lst", "lst_sc", "why_item", "why_val", "why_src"])
# a kernel call's events (see ``kernels.layout.Batch``), as numpy arrays
Events = namedtuple("Events", ["U", "I", "V", "Y", "T", "E", "F", "ctx_ptr", "ctx_hash"])


def outputs(n: int, k: int, explain: bool = False) -> Outputs:
    """Output arrays for ``n`` events; the reasons' arrays only when ``explain`` (events
    flagged ``EXPLAIN``), else (1, k) placeholders the kernel never touches."""
    m = n if explain else 1
    return Outputs(np.full(n, np.nan, dtype=np.float32), np.full(n, -2, dtype=np.int16),
                   np.full((n, k), -1, dtype=np.int32), np.full((n, k), -1, dtype=np.int32),
                   np.zeros((n, k), dtype=np.float32), np.full((m, k), -1, dtype=np.int32),
                   np.zeros((m, k), dtype=np.float32), np.zeros((m, k), dtype=np.int8))


def run(model, users, items, batch: Events, out: Outputs, k: int) -> int:
    """Run the kernel of ``model`` over the batch; -1, or the index of the event after
    which the model diverged. A kernel that runs out of pool room stops before an event;
    the pool grows and the batch resumes there."""
    start = 0
    n = len(batch.U)
    while True:
        model.reserve(users, items, n - start)
        items.reserve_log(n - start, model.log_entries(n - start))
        m = model.kernel_state(users, items, k)
        sc = scratch.scratch(items.arrays.cap, k)
        part = batch if start == 0 else Events(*(a[start:] for a in batch[:7]), batch.ctx_ptr[start:], batch.ctx_hash)
        view = out if start == 0 else Outputs(*(a[start:] for a in out))
        status = int(prequential(m, users.kernel(), items.kernel(), sc, Batch(*part), k, Out(*view)))
        if status == -1:
            return -1
        if status >= 0:
            return start + status
        start += -status - 2
        model.grow(users, items)


def read(model, users, items, row: int, k: int, explain: bool = False) -> tuple[list, np.ndarray, tuple | None]:
    """The current list (item ids, scores) of user row ``row``, read only; ``row`` -1 (nobody
    knows the user) gets the popularity list. Feature rows must be filled before. With
    ``explain``, the kernel's reasons (why_item, why_val, why_src) too, else None."""
    if len(items) == 0:
        return [], np.zeros(0, dtype=np.float32), None
    one = np.zeros(1)
    t = users.arrays["last_ts"][[row]] if row >= 0 else one
    flags = WANT_LIST | PEEK | (EXPLAIN if explain else 0)
    batch = Events(np.array([row], np.int64), np.zeros(1, np.int64), one.astype(np.float32), one, t,
                   np.zeros(1, np.int8), np.array([flags], np.int32), np.zeros(2, np.int64),
                   np.zeros(0, np.uint64))
    out = outputs(1, k, explain)
    if row < 0:
        # nobody knows this user: the popularity list, nothing excluded (u = -1 reads no user row)
        popular(users, items, out, k)
        if explain:
            out.why_src[0, :] = np.where(out.lst[0] >= 0, SRC_POPULAR, 0)
    else:
        run(model, users, items, batch, out, k)
    ids, scores = list_items(items.ids.ids, out.lst[0], out.lst_sc[0])
    return ids, scores, ((out.why_item[0], out.why_val[0], out.why_src[0]) if explain else None)


def popular(users, items, out: Outputs, k: int) -> None:
    """The popularity list into the first list of ``out``."""
    from .kernels.core import user_pop_topk

    sc = scratch.scratch(items.arrays.cap, k)
    idx = np.full(k, -1, np.int32)
    scores = np.zeros(k)
    c = user_pop_topk(-1, users.kernel(), items.kernel(), sc, k, idx, scores)
    out.lst[0] = idx
    out.lst_sc[0, :c] = scores[:c]


def first_recs(items, F: np.ndarray, topk: np.ndarray, seq: np.ndarray) -> list:
    """(item id, seq) of the items that the ranked events (flag ``RANK`` in ``F``) put in a
    top-k for the first time; the seq goes to the item side's ``book.first_rec`` too."""
    from .kernels.core import mark_first_recs

    m = topk.size
    rows, seqs = np.empty(m, np.int64), np.empty(m, np.int64)
    c = mark_first_recs(F, RANK, topk, np.ascontiguousarray(seq, dtype=np.int64),
                        items.arrays["book.first_rec"], rows, seqs)
    if not c:
        return []
    ids = items.ids.ids
    return [(ids[r], q) for r, q in zip(rows[:c].tolist(), seqs[:c].tolist())]
