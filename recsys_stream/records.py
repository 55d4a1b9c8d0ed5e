"""The list record: what the recommendations topic (and ``--lists`` files) carry per list.

One place builds it, so every path that emits a list (a learned event, a replayed event
after a restore, a read) produces the same fields::

    {"user": "42", "items": ["i3", "i9"], "scores": [0.91, 0.88], "model": "itemknn",
     "version": 17, "event_ts": 1700000000.5, "trigger": {"partition": 0, "offset": 1234}}

Sinks add ``emitted_at`` (wall clock) when they write it. ``version`` is the number of the
user's applied events at the triggering event.
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
    rec = {
        "user": user,
        "items": items,
        "scores": [float(x) for x in scores],
        "model": model,
        "version": int(version),
        "event_ts": float(event_ts),
        "trigger": {"partition": int(partition), "offset": int(offset)},
    }
    if ingest_ts is not None:
        rec["_ingest_ts"] = float(ingest_ts)  # for the sink's latency metric; removed before writing
    return rec


def list_items(ids: list, rows: np.ndarray, scores: np.ndarray) -> tuple[list, np.ndarray]:
    """The external ids and scores of a kernel's list (rows -1-padded)."""
    m = int(np.count_nonzero(rows >= 0))
    return [ids[r] for r in rows[:m]], scores[:m]
