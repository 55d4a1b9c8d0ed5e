"""Readers of user and item side features (MovieLens ``u.user``/``u.item``, and the
``users.dat``/``movies.dat`` of MovieLens 1M) into a ``FeatureStore``.

MovieLens 100K files are latin-1. A malformed line becomes a ``DeadLetter`` (line, raw
bytes, reason) and is skipped; the rest is read.
"""

from __future__ import annotations

import os

from ..features import FeatureStore, age_bucket
from .readers import DeadLetter, ReaderError


def _lines(path: str):
    if not os.path.exists(path):
        raise ReaderError(f"{path}: no such file")
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = raw.rstrip(b"\r\n")
            if line.strip():
                yield lineno, line, line.decode("latin-1")


def read_user_features(path: str, store: FeatureStore, errors: list[DeadLetter]) -> int:
    """``u.user`` (``id|age|gender|occupation|zip``) or ``users.dat``
    (``id::gender::age::occupation::zip``); returns how many users were read."""
    n = 0
    for lineno, raw, text in _lines(path):
        dat = "::" in text
        parts = text.split("::" if dat else "|")
        try:
            if len(parts) != 5:
                raise ValueError(f"expected 5 fields separated by {'::' if dat else '|'!r}, got {len(parts)}")
            uid = parts[0].strip()
            gender, age_text, occ = (parts[1], parts[2], parts[3]) if dat else (parts[2], parts[1], parts[3])
            age = int(age_text)
            if not uid:
                raise ValueError("empty user id")
        except ValueError as exc:
            errors.append(DeadLetter(path, f"user features: {exc}", raw, line=lineno))
            continue
        store.users[uid] = [f"age={age_bucket(age)}", f"gender={gender.strip()}", f"occ={occ.strip()}"]
        n += 1
    return n


def _genre_names(path: str) -> list[str] | None:
    """Genre names from ``u.genre`` beside ``u.item`` (``name|index``), if present."""
    gpath = os.path.join(os.path.dirname(path), "u.genre")
    if not os.path.exists(gpath):
        return None
    names: dict[int, str] = {}
    for _lineno, _raw, text in _lines(gpath):
        name, _, idx = text.rpartition("|")
        if name and idx.strip().isdigit():
            names[int(idx)] = name
    return [names.get(j, f"g{j}") for j in range(max(names) + 1)] if names else None


def read_item_features(path: str, store: FeatureStore, errors: list[DeadLetter]) -> int:
    """``u.item`` (``id|title|date|video date|url|<genre flags>``) or ``movies.dat``
    (``id::title::Genre|Genre``); returns how many items were read."""
    names = None
    n = 0
    for lineno, raw, text in _lines(path):
        try:
            if "::" in text:
                parts = text.split("::")
                if len(parts) != 3:
                    raise ValueError(f"expected 3 fields separated by '::', got {len(parts)}")
                genres = [g for g in parts[2].split("|") if g]
            else:
                parts = text.split("|")
                if len(parts) < 6:
                    raise ValueError(f"expected id|title|date|video date|url|genre flags..., got {len(parts)} fields")
                flags = parts[5:]
                if any(f not in ("0", "1") for f in flags):
                    raise ValueError("genre flags must be 0 or 1")
                if names is None:
                    names = _genre_names(path) or [f"g{j}" for j in range(len(flags))]
                genres = [names[j] if j < len(names) else f"g{j}" for j, f in enumerate(flags) if f == "1"]
            iid = parts[0].strip()
            if not iid:
                raise ValueError("empty item id")
        except ValueError as exc:
            errors.append(DeadLetter(path, f"item features: {exc}", raw, line=lineno))
            continue
        store.items[iid] = [f"genre={g}" for g in genres]
        n += 1
    return n
