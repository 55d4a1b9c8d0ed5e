"""Hypothesis strategies of hostile input (issue #10), shared by tests/test_hostile*.py.

``messages()`` draws ``(key, value bytes, ok)``: ``ok`` is True for a valid event (built
valid), False for one built invalid (a valid event with one field broken, or bytes that
are not JSON), None for random bytes (almost never an event; their fate is not
predicted). Validity is known by construction, never by calling the parser under test.
Ratings are drawn for a model whose range is ``RATING_RANGE``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import orjson
from hypothesis import strategies as st

from recsys_stream.events import EVENT_TYPES, MAX_CONTEXT_FEATURES, MAX_ID_LEN
from recsys_stream.io.eventjson import MAX_ABS_VALUE, TS_MAX, TS_MIN

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RATING_RANGE = (1.0, 5.0)

# any Unicode but lone surrogates (JSON text is UTF-8): astral CJK, emoji, combining marks
CHARS = st.characters(exclude_categories=("Cs",))
WIDE1 = ["𠀀", "𪚥", "中", "文", "😀", "\u0301", "\u0000", "\ufeff", "ﷺ", "\U0010fffd"]  # 4-byte UTF-8 among them
WIDE = st.sampled_from(WIDE1 + ["👩\u200d👩\u200d👧", "e\u0301"])


def ids(max_len: int = MAX_ID_LEN):
    """Valid ids: text of 1..max_len characters (often wide), or integers."""
    text = st.one_of(st.text(CHARS, min_size=1, max_size=max_len),
                     st.lists(WIDE, min_size=1, max_size=max_len).map("".join).filter(lambda s: len(s) <= max_len),
                     st.text(st.sampled_from(WIDE1), min_size=max_len, max_size=max_len))
    return st.one_of(text, st.integers(-(2 ** 63), 2 ** 63 - 1), st.sampled_from(["0", "42", " ", "a"]))


def iso_times():
    lo = datetime(1970, 1, 1, tzinfo=timezone.utc)
    return st.integers(0, int(TS_MAX) - 1).map(lambda s: (lo + timedelta(seconds=s)).isoformat().replace("+00:00", "Z"))


TIMES = st.one_of(st.floats(TS_MIN, TS_MAX, exclude_max=True), st.integers(int(TS_MIN), int(TS_MAX) - 1), iso_times(),
                  st.sampled_from([0, 0.0, 9_999_999_999.0, 1.7e9]))
SCALARS = st.one_of(st.text(CHARS, max_size=20), st.integers(-(2 ** 63), 2 ** 63 - 1), st.booleans(),
                    st.floats(allow_nan=False, allow_infinity=False))


def contexts():
    return st.dictionaries(st.text(CHARS, max_size=10), st.one_of(SCALARS, st.lists(SCALARS, max_size=3)),
                           max_size=8).filter(
        lambda d: sum(len(v) if isinstance(v, list) else 1 for v in d.values()) <= MAX_CONTEXT_FEATURES)


@st.composite
def valid_events(draw, rating_range=RATING_RANGE) -> dict:
    etype = draw(st.sampled_from(sorted(EVENT_TYPES)))
    if etype == "rating" and rating_range is not None:
        value = draw(st.one_of(st.floats(*rating_range), st.integers(1, 5)))
    else:
        value = draw(st.one_of(st.floats(-MAX_ABS_VALUE, MAX_ABS_VALUE), st.integers(-10 ** 6, 10 ** 6),
                               st.sampled_from([1e-300, -0.0, 5e-324, MAX_ABS_VALUE])))
    obj = {"user": draw(ids()), "item": draw(ids()), "ts": draw(TIMES), "type": etype, "value": value}
    if draw(st.booleans()):
        obj["context"] = draw(st.one_of(st.none(), contexts()))
    if draw(st.booleans()):
        obj["id"] = draw(st.one_of(st.none(), ids(), st.sampled_from(["dup-1", "dup-2"])))  # shared ids: duplicates
    if draw(st.booleans()):
        obj["extra"] = draw(st.one_of(SCALARS, st.lists(SCALARS), st.dictionaries(st.text(max_size=3), SCALARS)))
    return obj


TOO_LONG = st.one_of(st.text(CHARS, min_size=MAX_ID_LEN + 1, max_size=MAX_ID_LEN + 40),
                     st.just("中" * (MAX_ID_LEN + 1)), st.just("😀" * 300))
BROKEN = {
    "user": st.one_of(st.just(""), TOO_LONG, st.booleans(), st.lists(st.integers(-9, 9), max_size=2), st.just({}),
                      st.just(1.5), st.none()),
    "item": st.one_of(st.just(""), TOO_LONG, st.booleans(), st.just([]), st.just(-0.25), st.none()),
    "ts": st.one_of(st.sampled_from([1e300, -1, -1e-9, 1e20, TS_MAX, 1.8e308, -1e300]), st.booleans(), st.none(),
                    st.just("yesterday"), st.just({"t": 1}), st.just([1.7e9]), st.just("0001-01-01T00:00:00Z"),
                    st.just("9999-12-31T23:59:59")),
    "type": st.one_of(st.just("teleport"), st.just("RATING"), st.integers(0, 6), st.none(), st.just("")),
    "value": st.one_of(st.sampled_from([1e39, -1e39, 1.7e308, -1.7e308, MAX_ABS_VALUE * 2, 3.5e38]), st.none(),
                       st.booleans(), st.just("4"), st.just([4]), st.just({"v": 4})),
    "context": st.one_of(st.just([1, 2]), st.just("ios"), st.just(3), st.just({"a": {"b": 1}}),
                         st.just({"a": [[1]]}), st.just({"a": list(range(MAX_CONTEXT_FEATURES + 1))})),
    "id": st.one_of(st.just(""), TOO_LONG, st.booleans(), st.just([1])),
}


@st.composite
def invalid_events(draw, rating_range=RATING_RANGE) -> bytes:
    obj = draw(valid_events(rating_range))
    how = draw(st.sampled_from(["drop", "null", "break", "rating", "not-object", "nan", "truncate", "junk"]))
    if how == "drop":
        del obj[draw(st.sampled_from(["user", "item", "ts", "type", "value"]))]
    elif how == "null":
        obj[draw(st.sampled_from(["user", "item", "ts", "type", "value"]))] = None
    elif how == "break":
        name = draw(st.sampled_from(sorted(BROKEN)))
        obj[name] = draw(BROKEN[name])
        if name == "value" and isinstance(obj[name], float) and abs(obj[name]) > 1e308:
            obj[name] = 1e39
    elif how == "rating" and rating_range is not None:
        obj["type"] = "rating"
        obj["value"] = draw(st.one_of(st.floats(-MAX_ABS_VALUE, rating_range[0], exclude_max=True),
                                      st.floats(rating_range[1], MAX_ABS_VALUE, exclude_min=True)))
    elif how == "rating":  # no model range: beyond the global bound
        obj["value"] = draw(st.sampled_from([-1, 1])) * draw(st.floats(MAX_ABS_VALUE, 1e300, exclude_min=True))
    elif how == "not-object":
        return orjson.dumps(draw(st.one_of(st.lists(SCALARS, max_size=3), SCALARS, st.just([obj]))))
    elif how == "nan":
        obj["value"] = 12345.0
        return orjson.dumps(obj).replace(b"12345.0", draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"1e400"])))
    raw = orjson.dumps(obj)
    if how == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    if how == "junk":
        return draw(st.sampled_from([b"x", b"\xff", b"\x00", b"{", b"]", b"//"])) + raw
    return raw


KEYS = st.one_of(st.none(), st.binary(max_size=20), st.just(b""), st.text(CHARS, max_size=10).map(str.encode))


def messages(rating_range=RATING_RANGE):
    """(key, value, ok) with ok True/False/None (see the module docstring); ``rating_range``
    None: ratings are checked against the global bound only (the job as it is wired)."""
    valid = st.tuples(KEYS, valid_events(rating_range).map(orjson.dumps), st.just(True))
    invalid = st.tuples(KEYS, invalid_events(rating_range), st.just(False))
    empty = st.tuples(KEYS, st.sampled_from([None, b"", b"null", b"{}", b"[]"]), st.just(False))
    random = st.tuples(KEYS, st.binary(max_size=300), st.none())
    return st.one_of(valid, valid, invalid, invalid, empty, random)


NUMBERS = st.one_of(st.sampled_from(["1e39", "-1e39", "nan", "inf", "-inf", "1e300", "-1", "1e20", "4", "0", "5.5",
                                     "", " ", "0x10", "1_000", "١٢٣"]),
                    st.floats().map(repr), st.integers().map(str), st.text(max_size=8))


def udata_lines():
    """Lines in the u.data shape (user TAB item TAB rating TAB time) with hostile fields."""
    field = st.one_of(NUMBERS, ids(40).map(str))
    return st.lists(field, min_size=1, max_size=6).map(lambda fs: "\t".join(fs).encode("utf-8"))


def normalized(x) -> str:
    """An id as the parser normalises it (42 and "42" are one id)."""
    from recsys_stream.events import normalize_id

    return normalize_id(x)
