"""The JSON event format shared by JSON Lines files and Kafka messages.

One object per event::

    {"user": "42", "item": "i7", "ts": 1700000000.5, "type": "click", "value": 1.0,
     "context": {"device": "ios"}, "id": "evt-123"}

``user``, ``item``, ``ts`` (epoch seconds, or an ISO 8601 string), ``type`` and ``value``
are required; ``context`` (an object of scalars or lists of scalars) and ``id`` (an event
id, for de-duplication) are optional. Anything else is an ``EventError`` naming what was
expected.

Limits (the same for files, the backtest and Kafka messages; one place, here):

- ``value``: a finite number with ``|value| <= MAX_ABS_VALUE`` (1e6). Kernels compute in
  float32 (largest ~3.4e38), and a value whose square or product with a factor overflows
  would make a parameter infinite; 1e6 leaves every model many orders of magnitude of
  room. A model may narrow it for ratings (``value_range``, e.g. mf's rating_min..
  rating_max): a rating outside is a dead letter too.
- ``ts``: finite epoch seconds with ``TS_MIN <= ts < TS_MAX``, i.e. from 1970-01-01 to
  before 2286-11-20 (1e10 s). Popularity decays by ``2 ** (ts / half-life)`` around a
  landmark; a time far outside any real clock would overflow it and turn scores into NaN.
- ids: at most ``MAX_ID_LEN`` (256) characters, any Unicode (checkpoints store any of
  them, see ``storage``).
"""

from __future__ import annotations

import math
from datetime import datetime, timezone

import orjson

from ..events import EVENT_TYPES, MAX_CONTEXT_FEATURES, MAX_ID_LEN, RATING, context_hashes, normalize_id

REQUIRED = ("user", "item", "ts", "type", "value")
# The documented bounds of an event (see the module docstring); readers use them too.
MAX_ABS_VALUE = 1e6
TS_MIN = 0.0
TS_MAX = 1e10  # 2286-11-20: an epoch second beyond any real clock


def _g(x: float) -> str:
    return f"{x:g}"


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
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            ts = dt.timestamp()
        except (ValueError, OverflowError):
            raise EventError(f"field 'ts': {value[:40]!r} is not epoch seconds or ISO 8601") from None
    else:
        raise EventError(f"field 'ts': expected a number or an ISO 8601 string, got {type(value).__name__}")
    return check_ts(ts)


def check_ts(ts: float, what: str = "field 'ts'") -> float:
    """A time within the documented range (see the module docstring)."""
    if not math.isfinite(ts):
        raise EventError(f"{what} is not finite")
    if not TS_MIN <= ts < TS_MAX:
        raise EventError(f"{what} {ts:.6g} is outside the allowed range: epoch seconds from {_g(TS_MIN)} "
                         f"(1970-01-01) to below {_g(TS_MAX)} (2286-11-20)")
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
    try:
        v = float(value)
    except OverflowError:
        v = math.inf
    return check_value(v)


def check_value(v: float, what: str = "field 'value'") -> float:
    """A finite value within the documented bound (see the module docstring)."""
    if not math.isfinite(v):
        raise EventError(f"{what} is NaN or infinite")
    if abs(v) > MAX_ABS_VALUE:
        raise EventError(f"{what} {v:.6g} is outside the allowed range -{_g(MAX_ABS_VALUE)}..{_g(MAX_ABS_VALUE)}")
    return v


def check_range(v: float, etype: int, value_range: tuple[float, float] | None) -> float:
    """A rating (the ``rating`` type) must lie in the model's ``value_range`` (lo, hi)."""
    if value_range is not None and etype == RATING:
        lo, hi = value_range
        if not lo <= v <= hi:
            raise EventError(f"rating {_g(v)} is outside the model's range {_g(lo)}..{_g(hi)}")
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


def parse_event_obj(obj, value_range: tuple[float, float] | None = None) -> tuple:
    """Validate a decoded JSON value; returns (user, item, ts, type code, value, ctx hashes, id).
    ``value_range``: the (lo, hi) a rating must lie in (the model's domain); None: only the
    global bound."""
    if not isinstance(obj, dict):
        raise EventError(f"expected a JSON object, got {type(obj).__name__}")
    missing = [f for f in REQUIRED if f not in obj]
    if missing:
        raise EventError(f"missing field(s) {', '.join(missing)}; an event needs {', '.join(REQUIRED)}")
    eid = obj.get("id")
    if eid is not None:
        eid = check_id(eid, "id")
    user = check_id(obj["user"], "user")
    item = check_id(obj["item"], "item")
    ts = parse_ts(obj["ts"])
    etype = parse_type(obj["type"])
    value = check_range(parse_value(obj["value"]), etype, value_range)
    return user, item, ts, etype, value, parse_context(obj.get("context")), eid


def parse_event_bytes(raw: bytes, value_range: tuple[float, float] | None = None) -> tuple:
    """Decode and validate one JSON event (see ``parse_event_obj``)."""
    if raw is None:
        raise EventError("empty message (no value)")
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise EventError(f"not valid JSON: {exc}") from None
    return parse_event_obj(obj, value_range)
