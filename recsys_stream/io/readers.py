"""Readers of interaction logs into one ``EventBatch``, with a dead letter for bad lines.

Formats (``--format``, or detected from the name and the first line):

- ``udata``: MovieLens 100K ``u.data``: ``user<TAB>item<TAB>rating<TAB>timestamp``;
- ``dat``: MovieLens 1M/10M ``ratings.dat``: ``user::item::rating::timestamp``;
- ``mlcsv``: MovieLens ``ratings.csv``: header ``userId,movieId,rating,timestamp``;
- ``jsonl``: JSON Lines in the event format of ``eventjson``;
- ``csv``: any delimited file with a header and a column mapping
  (``user=COL,item=COL[,ts=COL][,value=COL][,type=COL]``).

A malformed line never stops a read: it becomes a ``DeadLetter`` holding the line number,
its raw bytes and the reason, and the reader goes on. Values and times obey the bounds of
``eventjson`` (``MAX_ABS_VALUE``, ``TS_MIN``/``TS_MAX``) in every format, and ratings the
model's ``value_range`` when one is given. Events come back in event-time order (stable
for ties) unless ``sort=False``.

Dead-letter files are written without following a symlink at their path
(``write_dead_letters``): a link planted there is refused, its target left alone.
"""

from __future__ import annotations

import base64
import csv
import io
import math
import os
from dataclasses import dataclass, field

import numpy as np
import orjson

from ..events import EVENT_TYPES, RATING, EventBatch
from .eventjson import (EventError, check_id, check_range, check_ts, check_value, parse_event_bytes, parse_ts,
                        parse_type)

FORMATS = ("udata", "dat", "mlcsv", "jsonl", "csv")
CSV_FIELDS = ("user", "item", "ts", "value", "type")


@dataclass
class DeadLetter:
    """A record that could not be used, with where it came from and why."""

    source: str
    reason: str
    raw: bytes
    line: int | None = None
    partition: int | None = None
    offset: int | None = None
    key: bytes | None = None  # the message key, for Kafka dead letters

    def to_json(self) -> bytes:
        obj = {"source": self.source, "reason": self.reason}
        if self.line is not None:
            obj["line"] = self.line
        if self.partition is not None:
            obj["partition"] = self.partition
        if self.offset is not None:
            obj["offset"] = self.offset
        try:
            obj["raw"] = self.raw.decode("utf-8")
        except UnicodeDecodeError:
            obj["raw_b64"] = base64.b64encode(self.raw).decode("ascii")
        return orjson.dumps(obj)


@dataclass
class ReadResult:
    events: EventBatch
    errors: list[DeadLetter] = field(default_factory=list)
    format: str = ""
    lines: int = 0


class ReaderError(ValueError):
    """The file as a whole cannot be read (missing, unknown format, bad header or mapping)."""


def detect_format(path: str) -> str:
    name = os.path.basename(path).lower()
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name == "u.data" or name.endswith(".data"):
        return "udata"
    if name.endswith(".dat"):
        return "dat"
    with open(path, "rb") as f:
        first = f.readline().decode("utf-8", "replace").strip()
    if first.startswith("{"):
        return "jsonl"
    if "::" in first:
        return "dat"
    if first.replace(" ", "").lower().startswith("userid,movieid,rating"):
        return "mlcsv"
    if first.count("\t") == 3:
        return "udata"
    raise ReaderError(
        f"{path}: cannot tell the format from the name or the first line ({first[:60]!r}); "
        f"pass --format, one of {', '.join(FORMATS)}"
    )


def parse_columns(spec: str | None) -> dict[str, str]:
    """``user=uid,item=iid,ts=time`` -> {"user": "uid", ...}."""
    if not spec:
        raise ReaderError("--format csv needs --columns user=COL,item=COL[,ts=COL][,value=COL][,type=COL]")
    out = {}
    for part in spec.split(","):
        if "=" not in part:
            raise ReaderError(f"--columns: {part!r} is not FIELD=COLUMN")
        k, v = (x.strip() for x in part.split("=", 1))
        if k not in CSV_FIELDS:
            raise ReaderError(f"--columns: unknown field {k!r}; expected some of {', '.join(CSV_FIELDS)}")
        out[k] = v
    for need in ("user", "item"):
        if need not in out:
            raise ReaderError(f"--columns must map {need!r}")
    return out


class _Columns:
    """Accumulates parsed events column by column."""

    def __init__(self):
        self.user, self.item, self.ts, self.etype, self.value, self.line = [], [], [], [], [], []
        self.ctx: list = []
        self.has_ctx = False

    def add(self, user, item, ts, etype, value, line, ctx=None):
        self.user.append(user)
        self.item.append(item)
        self.ts.append(ts)
        self.etype.append(etype)
        self.value.append(value)
        self.line.append(line)
        self.ctx.append(ctx)
        if ctx:
            self.has_ctx = True

    def batch(self) -> EventBatch:
        n = len(self.user)
        return EventBatch.from_columns(
            self.user, self.item, self.ts, self.etype, self.value,
            np.arange(n), np.full(n, -1), self.line, self.ctx if self.has_ctx else None,
        )


def _number(text: str, what: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise EventError(f"{what}: {text[:40]!r} is not a number") from None
    if not math.isfinite(v):
        raise EventError(f"{what} is NaN or infinite")
    return v


def _value(text: str, what: str) -> float:
    return check_value(_number(text, what), what)


def _read_delimited(path, sep: str, cols: _Columns, errors: list, skip_header: bool,
                    value_range=None) -> int:
    lines = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            lines = lineno
            if skip_header and lineno == 1:
                continue
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                text = line.decode("utf-8")
                parts = text.split(sep)
                if len(parts) != 4:
                    raise EventError(f"expected 4 fields separated by {sep!r} (user, item, rating, timestamp), got {len(parts)}")
                u = check_id(parts[0].strip(), "user")
                i = check_id(parts[1].strip(), "item")
                r = check_range(_value(parts[2], "rating"), RATING, value_range)
                t = check_ts(_number(parts[3], "timestamp"), "timestamp")
            except (EventError, UnicodeDecodeError) as exc:
                errors.append(DeadLetter(path, str(exc), line, line=lineno))
                continue
            cols.add(u, i, t, RATING, r, lineno)
    return lines


def _read_jsonl(path, cols: _Columns, errors: list, value_range=None) -> int:
    lines = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            lines = lineno
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                u, i, t, et, v, ctx, _eid = parse_event_bytes(line, value_range)
            except EventError as exc:
                errors.append(DeadLetter(path, str(exc), line, line=lineno))
                continue
            cols.add(u, i, t, et, v, lineno, ctx)
    return lines


def _read_csv(path, mapping: dict, delimiter: str, default_type: str, cols: _Columns, errors: list,
              value_range=None) -> int:
    default_code = parse_type(default_type)
    lines = 0
    with open(path, "rb") as f:
        header_raw = f.readline()
        header = next(csv.reader([header_raw.decode("utf-8", "replace").rstrip("\r\n")], delimiter=delimiter))
        index = {name.strip(): j for j, name in enumerate(header)}
        missing = [c for c in mapping.values() if c not in index]
        if missing:
            raise ReaderError(f"{path}: line 1 (header) lacks column(s) {missing}; it has {header}")
        pos = {k: index[c] for k, c in mapping.items()}
        width = len(header)
        lines = 1
        for lineno, raw in enumerate(f, start=2):
            lines = lineno
            line = raw.rstrip(b"\r\n")
            if not line.strip():
                continue
            try:
                row = next(csv.reader([line.decode("utf-8")], delimiter=delimiter))
                if len(row) != width:
                    raise EventError(f"expected {width} columns like the header, got {len(row)}")
                u = check_id(row[pos["user"]].strip(), "user")
                i = check_id(row[pos["item"]].strip(), "item")
                t = float(lineno) if "ts" not in pos else _ts_text(row[pos["ts"]])
                v = 1.0 if "value" not in pos else _value(row[pos["value"]], "value")
                et = default_code if "type" not in pos else parse_type(row[pos["type"]].strip())
                check_range(v, et, value_range)
            except (EventError, UnicodeDecodeError, csv.Error) as exc:
                errors.append(DeadLetter(path, str(exc), line, line=lineno))
                continue
            cols.add(u, i, t, et, v, lineno)
    return lines


def _ts_text(text: str) -> float:
    text = text.strip()
    try:
        v = float(text)
    except ValueError:
        return parse_ts(text)
    return check_ts(v, "timestamp")


def read_events(
    path: str,
    fmt: str | None = None,
    columns: str | None = None,
    delimiter: str = ",",
    default_type: str = "rating",
    sort: bool = True,
    value_range: tuple[float, float] | None = None,
) -> ReadResult:
    """Read a whole log (see the module docstring); bad lines land in ``errors``.
    ``value_range``: the (lo, hi) a rating must lie in (the model's domain); None: only
    the global bound ``eventjson.MAX_ABS_VALUE``."""
    if not os.path.exists(path):
        raise ReaderError(f"{path}: no such file")
    if os.path.isdir(path):
        for name in ("u.data", "ratings.dat", "ratings.csv"):
            if os.path.exists(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise ReaderError(f"{path} is a folder without u.data, ratings.dat or ratings.csv")
    fmt = fmt or detect_format(path)
    if fmt not in FORMATS:
        raise ReaderError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if default_type not in EVENT_TYPES:
        raise ReaderError(f"unknown event type {default_type!r}; expected one of {', '.join(EVENT_TYPES)}")
    cols = _Columns()
    errors: list[DeadLetter] = []
    if fmt == "udata":
        lines = _read_delimited(path, "\t", cols, errors, skip_header=False, value_range=value_range)
    elif fmt == "dat":
        lines = _read_delimited(path, "::", cols, errors, skip_header=False, value_range=value_range)
    elif fmt == "mlcsv":
        with open(path, "rb") as f:
            head = f.readline().decode("utf-8", "replace").strip().replace(" ", "")
        if head.lower() != "userid,movieid,rating,timestamp":
            raise ReaderError(f"{path}: line 1 should be the header userId,movieId,rating,timestamp, got {head[:60]!r}")
        lines = _read_delimited(path, ",", cols, errors, skip_header=True, value_range=value_range)
    elif fmt == "jsonl":
        lines = _read_jsonl(path, cols, errors, value_range)
    else:
        if len(delimiter) != 1:
            raise ReaderError(f"--delimiter: expected one character, got {delimiter!r}")
        lines = _read_csv(path, parse_columns(columns), delimiter, default_type, cols, errors, value_range)
    batch = cols.batch()
    if sort:
        batch = batch.sort_by_time()
        batch.seq = np.arange(len(batch), dtype=np.int64)
    return ReadResult(batch, errors, fmt, lines)


class DeadLetterPathError(OSError):
    """The dead-letter file cannot be written there (a symlink, a folder, no permission)."""


def write_dead_letters(path: str, errors: list[DeadLetter], append: bool = False) -> None:
    """Write the dead letters as JSON Lines. The path is opened with ``O_NOFOLLOW``: a
    symlink there (planted, or left over) is refused instead of overwriting its target."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC) | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if os.path.islink(path):
            raise DeadLetterPathError(exc.errno, "it is a symbolic link; refusing to write through it (remove it "
                                      "or choose another path)", path) from None
        raise DeadLetterPathError(exc.errno, exc.strerror or str(exc), path) from None
    with os.fdopen(fd, "wb") as f:
        for e in errors:
            f.write(e.to_json())
            f.write(b"\n")


def write_events_jsonl(path_or_file, batch: EventBatch) -> None:
    """Write a batch as JSON Lines in the event format (used by ``generate``)."""
    from ..events import TYPE_NAMES

    own = isinstance(path_or_file, (str, os.PathLike))
    f = open(path_or_file, "wb") if own else path_or_file
    try:
        buf = io.BytesIO()
        for e in range(len(batch)):
            buf.write(
                orjson.dumps(
                    {
                        "user": batch.user[e],
                        "item": batch.item[e],
                        "ts": float(batch.ts[e]),
                        "type": TYPE_NAMES[int(batch.etype[e])],
                        "value": float(batch.value[e]),
                    }
                )
            )
            buf.write(b"\n")
            if buf.tell() > 1 << 20:
                f.write(buf.getvalue())
                buf = io.BytesIO()
        f.write(buf.getvalue())
    finally:
        if own:
            f.close()
