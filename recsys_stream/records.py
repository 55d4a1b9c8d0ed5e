"""The list record: what the recommendations topic (and ``--lists`` files) carry per list.

One place builds it, so every path that emits a list (a learned event, a replayed event
after a restore, a read) produces the same fields::

    {"user": "42", "items": ["i3", "i9"], "scores": [0.91, 0.88], "model": "itemknn",
     "version": 17, "event_ts": 1700000000.5, "trigger": {"partition": 0, "offset": 1234}}

Sinks add ``emitted_at`` (wall clock) when they write it. ``version`` is the number of the
user's applied events at the triggering event.

With reasons on (``--reasons``), a record also carries ``reasons``, a list parallel to
``items`` (computed in the kernel at the event: ``kernels.explain``), each one of:

- ``{"because": "i42", "share": 0.61}``: item-to-item (``itemknn``, the hybrid's
  co-occurrence source): the user's recent item that contributes most to the item's
  score, and its share of that score;
- ``{"because": "i42", "similarity": 0.83}``: a factor model (``implicit``, ``mf``, the
  hybrid's factor source): the user's recent item most similar to it (cosine of the item
  factors);
- ``{"source": "popular"}``: on the list for its popularity (``pop``, a user the model
  does not know yet, an item no recent item points to);
- ``{"source": "model"}``: the model has no reason of its own (``ftrl``).

The hybrid adds ``"sources"``, the candidate sources that proposed the item, of
``"itemknn"``, ``"implicit"`` and ``"popular"``; its reason is the first of item-to-item and
factors among them.
"""

from __future__ import annotations

import numpy as np


def list_record(user: str, items: list, scores, model: str, version: int, event_ts: float, partition: int,
                offset: int, ingest_ts: float | None = None) -> dict:
    """The list record of ``user`` (see the module docstring):

    >>> list_record("42", ["i3", "i9"], [0.91, 0.88], "itemknn", 17, 1700000000.5, 0, 1234)
    {'user': '42', 'items': ['i3', 'i9'], 'scores': [0.91, 0.88], 'model': 'itemknn', 'version': 17,
     'event_ts': 1700000000.5, 'trigger': {'partition': 0, 'offset': 1234}}
    """
    return _record(user, items, [float(x) for x in scores], model, int(version), float(event_ts), int(partition),
                   int(offset), None if ingest_ts is None else float(ingest_ts))


def _record(user: str, items: list, scores: list, model: str, version: int, event_ts: float, partition: int,
            offset: int, ingest_ts: float | None) -> dict:
    """The record's fields, from values that are Python's already (``list_record``,
    ``list_records``)."""
    rec = {
        "user": user,
        "items": items,
        "scores": scores,
        "model": model,
        "version": version,
        "event_ts": event_ts,
        "trigger": {"partition": partition, "offset": offset},
    }
    if ingest_ts is not None:
        rec["_ingest_ts"] = ingest_ts  # for the sink's latency metric; removed before writing
    return rec


SOURCES = ((1, "itemknn"), (2, "implicit"), (4, "popular"))  # kernels.explain's bits (8: a similarity)


def reasons(ids: list, why_item, why_val, why_src, count: int, sources: bool = False) -> list:
    """The ``reasons`` of a list of ``count`` items from a kernel's explanation (arrays or
    lists; see the module docstring; ``sources``: name the proposing sources, as the
    hybrid does):

    >>> reasons(["i1", "i2", "i3"], np.array([2, -1, 0]), np.array([0.5, 0.0, 0.9]), np.array([1, 4, 10]), 3)
    [{'because': 'i3', 'share': 0.5}, {'source': 'popular'}, {'because': 'i1', 'similarity': 0.9}]
    """
    if isinstance(why_item, np.ndarray):
        why_item, why_val, why_src = _as_lists(why_item[:count], why_val[:count], why_src[:count])
    out = []
    for h, v, src in zip(why_item[:count], why_val[:count], why_src[:count]):
        if h >= 0 and src & 8:
            why = {"because": ids[h], "similarity": v}
        elif h >= 0 and src & 1:
            why = {"because": ids[h], "share": v}
        elif src & 5:  # popular, or item-to-item with no recent item behind it: its popularity term
            why = {"source": "popular"}
        else:
            why = {"source": "model"}
        if sources:
            why["sources"] = [name for bit, name in SOURCES if src & bit]
        out.append(why)
    return out


def _as_lists(why_item, why_val, why_src) -> tuple[list, list, list]:
    """A kernel's reason arrays as Python lists, the values rounded to 4 decimals (in
    float64, so 0.61 prints as 0.61), all at once rather than item by item."""
    return why_item.tolist(), np.round(why_val.astype(np.float64), 4).tolist(), why_src.tolist()


def list_items(ids: list, rows: np.ndarray, scores: np.ndarray) -> tuple[list, np.ndarray]:
    """The external ids and scores of a kernel's list (rows -1-padded)."""
    m = int(np.count_nonzero(rows >= 0))
    return [ids[r] for r in rows[:m]], scores[:m]


def list_records(b, sel: np.ndarray, lst: np.ndarray, lst_sc: np.ndarray, ids: list, model: str,
                 versions: np.ndarray, why=None, sources: bool = False) -> list:
    """The list records of the events ``sel`` of ``b`` (an ``EventBatch``), from a kernel's
    lists (``lst``/``lst_sc``, a row per event of ``b``, -1-padded) and the users' versions
    (one per event of ``sel``); ``why``: the kernel's (why_item, why_val, why_src) rows, for
    ``reasons``. The records ``list_record`` builds, with every column turned into Python
    values once per batch (``tolist``), not per event and field."""
    sel = np.asarray(sel, dtype=np.int64)
    if not len(sel):
        return []
    rows = lst[sel]
    counts = np.count_nonzero(rows >= 0, axis=1).tolist()
    rows, scores = rows.tolist(), lst_sc[sel].tolist()
    users = b.user[sel].tolist()
    ts = b.ts[sel].astype(np.float64).tolist()
    part, off = b.part[sel].astype(np.int64).tolist(), b.offset[sel].astype(np.int64).tolist()
    ver = np.asarray(versions).astype(np.int64).tolist()
    ingest = [None] * len(sel) if b.ingest is None else b.ingest[sel].astype(np.float64).tolist()
    if why is not None:  # the batch's reasons as Python lists at once (not per item)
        why = _as_lists(why[0][sel], why[1][sel], why[2][sel])
    recs = []
    for j in range(len(sel)):
        m = counts[j]
        rec = _record(users[j], [ids[r] for r in rows[j][:m]], scores[j][:m], model, ver[j], ts[j], part[j], off[j],
                      ingest[j])
        if why is not None:
            rec["reasons"] = reasons(ids, why[0][j], why[1][j], why[2][j], m, sources)
        recs.append(rec)
    return recs
