"""Raw Kafka messages to event batches and dead letters, a batch at a time.

Whatever the bytes of a message, parsing it ends in an event or a dead letter with its
reason, never in an exception: the same message would come back after a restart and
stop the job again (a crash loop). A failure of the parser itself (a bug) is logged with
its traceback and the message is a dead letter too ("internal error ...").
"""

from __future__ import annotations

import logging

import numpy as np

from ..events import EventBatch
from .eventjson import EventError, check_id, parse_event_bytes
from .kafka import RawBatch
from .readers import DeadLetter

import orjson

log = logging.getLogger("recsys_stream.parse")


def _internal(exc: Exception) -> str:
    log.exception("the parser failed on a message (a bug; the message goes to the dead letter)")
    return f"internal error while parsing ({type(exc).__name__}: {str(exc)[:200]})"


class EventParser:
    """Parses each message of a ``RawBatch`` (see ``eventjson``); what fails becomes a
    ``DeadLetter`` with the original key and bytes, topic, partition, offset and reason.

    With ``max_lateness_s > 0``, an event whose time is more than that behind the latest
    event time seen on its partition is a dead letter too ("late"). ``value_range`` (lo,
    hi): a rating outside the model's domain is a dead letter ("rating 7 is outside the
    model's range 1..5"); None: only the global bound (``eventjson.MAX_ABS_VALUE``).
    """

    def __init__(self, max_lateness_s: float = 0.0, value_range: tuple[float, float] | None = None):
        self.max_lateness_s = max_lateness_s
        self.value_range = value_range
        self.latest: dict[tuple[str, int], float] = {}

    def __call__(self, raw: RawBatch) -> tuple[EventBatch | None, list[DeadLetter]]:
        users, items, ts, types, values, offsets, ctxs, eids = [], [], [], [], [], [], [], []
        dead: list[DeadLetter] = []
        key = (raw.topic, raw.partition)
        latest = self.latest.get(key, -np.inf)
        late = self.max_lateness_s
        vr = self.value_range
        for k, v, off in zip(raw.keys, raw.values, raw.offsets):
            try:
                u, i, t, et, val, ctx, eid = parse_event_bytes(v, vr)
                if late > 0 and t < latest - late:
                    raise EventError(f"late: event time {t:.3f} is {latest - t:.1f} s behind the latest "
                                     f"({latest:.3f}) seen on this partition; the limit is {late:g} s")
            except Exception as exc:  # noqa: BLE001: a message must never stop the job
                reason = str(exc) if isinstance(exc, EventError) else _internal(exc)
                dead.append(DeadLetter(raw.topic, reason, v if v is not None else b"", partition=raw.partition,
                                       offset=off, key=k))
                continue
            if t > latest:
                latest = t
            users.append(u)
            items.append(i)
            ts.append(t)
            types.append(et)
            values.append(val)
            offsets.append(off)
            ctxs.append(ctx)
            eids.append(eid)
        self.latest[key] = latest
        if not users:
            return None, dead
        n = len(users)
        b = EventBatch.from_columns(users, items, ts, types, values, offsets, np.full(n, raw.partition), offsets,
                                    ctxs if any(ctxs) else None)
        if any(e is not None for e in eids):
            b.eid = np.empty(n, dtype=object)
            b.eid[:] = eids
        b.ingest = np.full(n, raw.ingest_ts)
        return b, dead


class CatalogParser:
    """Catalog messages: ``{"item": ID, "op": "add" | "retire"}``; anything else is a dead letter."""

    def __call__(self, raw: RawBatch) -> tuple[list[tuple[str, str]], list[DeadLetter]]:
        ops, dead = [], []
        for k, v, off in zip(raw.keys, raw.values, raw.offsets):
            try:
                try:
                    obj = orjson.loads(v) if v is not None else None
                except orjson.JSONDecodeError as exc:
                    raise EventError(f"not valid JSON: {exc}") from None
                if not isinstance(obj, dict):
                    raise EventError("expected a JSON object {\"item\": ID, \"op\": \"add\"|\"retire\"}")
                if "item" not in obj or "op" not in obj:
                    raise EventError("a catalog message needs the fields item and op")
                op = obj["op"]
                if op not in ("add", "retire"):
                    raise EventError(f"field 'op': expected 'add' or 'retire', got {str(op)[:40]!r}")
                ops.append((check_id(obj["item"], "item"), op))
            except Exception as exc:  # noqa: BLE001: a message must never stop the job
                reason = str(exc) if isinstance(exc, EventError) else _internal(exc)
                dead.append(DeadLetter(raw.topic, reason, v if v is not None else b"", partition=raw.partition,
                                       offset=off, key=k))
        return ops, dead
