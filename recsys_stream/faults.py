"""Fault injection for crash tests: kill the process at a named point.

Real code in the worker, off unless ``RECSYS_FAULT`` names a point, optionally with the
hit on which to fire: ``RECSYS_FAULT=checkpoint.mid-write@3`` kills the process with
SIGKILL the third time a checkpoint is half written (inside the LMDB transaction).
Points: ``checkpoint.mid-write``, ``checkpoint.after-commit`` (LMDB committed, Bytewax
not yet), ``batch.processed`` (a batch learned, its output not yet written).
"""

from __future__ import annotations

import os
import signal
import threading

_hits: dict[str, int] = {}
_lock = threading.Lock()


def fault_point(name: str) -> None:
    spec = os.environ.get("RECSYS_FAULT")
    if not spec:
        return
    point, _, nth = spec.partition("@")
    if point != name:
        return
    with _lock:
        _hits[name] = _hits.get(name, 0) + 1
        hit = _hits[name]
    if hit == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
