"""The JSON event format shared by JSON Lines files and Kafka messages.

One object per event::

    {"user": "42", "item": "i7", "ts": 1700000000.5, "type": "click", "value": 1.0,
     "context": {"device": "ios"}, "id": "evt-123"}

``user``, ``item``, ``ts`` (epoch seconds, or an ISO 8601 string), ``type`` and ``value``
are required; ``context`` (an object of scalars or lists of scalars) and ``id`` (an event
id, for de-duplication) are optional. Anything else is an ``EventError`` naming what was
expected.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import orjson

from ..events import EVENT_TYPES, MAX_CONTEXT_FEATURES, MAX_ID_LEN, context_hashes, normalize_id

REQUIRED = ("user", "item", "ts", "type", "value")


class EventError(ValueError):
    """A record that is not a valid event; the message says what was expected."""


def parse_ts(value) -> float:
    if isinstance(value, bool):
        raise EventError("field 'ts': expected epoch seconds or an ISO 8601 string, got a boolean")
    if isinstance(value, (int, float)):
        ts = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise EventError(f"field 'ts': {value[:40]!r} is not epoch seconds or ISO 8601") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=timezone.utc)
        ts = dt.timestamp()
    else:
        raise EventError(f"field 'ts': expected a number or an ISO 8601 string, got {type(value).__name__}")
    if not math.isfinite(ts):
        raise EventError("field 'ts' is not finite")
    return ts


def check_id(value, name: str) -> str:
    try:
        text = normalize_id(value)
    except TypeError as exc:
        raise EventError(f"field {name!r}: {exc}") from None
    if not text:
        raise EventError(f"field {name!r} is empty")
    if len(text) > MAX_ID_LEN:
        raise EventError(f"field {name!r} is {len(text)} characters long; at most {MAX_ID_LEN} are allowed")
    return text


def parse_type(value) -> int:
    if not isinstance(value, str):
        raise EventError(f"field 'type': expected a string, got {type(value).__name__}")
    code = EVENT_TYPES.get(value)
    if code is None:
        raise EventError(f"field 'type': unknown event type {value[:40]!r}; expected one of {', '.join(EVENT_TYPES)}")
    return code


def parse_value(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise EventError(f"field 'value': expected a number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v):
        raise EventError("field 'value' is NaN or infinite")
    return v


def parse_context(value) -> list[int]:
    if value is None:
        return []
    if not isinstance(value, dict):
        raise EventError(f"field 'context': expected an object, got {type(value).__name__}")
    n = 0
    for key, v in value.items():
        vals = v if isinstance(v, list) else [v]
        for x in vals:
            if isinstance(x, float) and not math.isfinite(x):
                raise EventError(f"field 'context.{key}' is NaN or infinite")
            if not isinstance(x, (str, int, float, bool)):
                raise EventError(f"field 'context.{key}': expected scalars, got {type(x).__name__}")
            n += 1
    if n > MAX_CONTEXT_FEATURES:
        raise EventError(f"field 'context' has {n} features; at most {MAX_CONTEXT_FEATURES} are allowed")
    return context_hashes(value)


def parse_event_obj(obj) -> tuple:
    """Validate a decoded JSON value; returns (user, item, ts, type code, value, ctx hashes, id)."""
    if not isinstance(obj, dict):
        raise EventError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [f for f in REQUIRED if f not in obj]
    if missing:
        raise EventError(f"missing field(s) {', '.join(missing)}; an event needs {', '.join(REQUIRED)}")
    eid = obj.get("id")
    if eid is not None:
        eid = check_id(eid, "id")
    return (
        check_id(obj["user"], "user"),
        check_id(obj["item"], "item"),
        parse_ts(obj["ts"]),
        parse_type(obj["type"]),
        parse_value(obj["value"]),
        parse_context(obj.get("context")),
        eid,
    )


def parse_event_bytes(raw: bytes) -> tuple:
    """Decode and validate one JSON event (see ``parse_event_obj``)."""
    if raw is None:
        raise EventError("empty message (no value)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"not valid JSON: {exc}") from None
    return parse_event_obj(obj)
