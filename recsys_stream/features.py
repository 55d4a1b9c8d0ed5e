"""Side features of users and items, as 64-bit feature hashes (``field=value``).

A ``FeatureStore`` maps an external id to its feature hashes; ``fill_user_rows`` and
``fill_item_rows`` copy them into the per-row arrays of rows that have none yet (the
shard calls them before a kernel call or a read), and kernels cross and fold them into
FTRL buckets. The id itself is always the first feature of a row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .events import stable_hash64

MAX_USER_FEATURES = 8
MAX_ITEM_FEATURES = 24


def age_bucket(age: int) -> str:
    """MovieLens-1M style age groups."""
    for hi, name in ((18, "under18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")):
        if age < hi:
            return name
    return "56+"


@dataclass
class FeatureStore:
    """External id -> list of ``field=value`` strings, hashed once when a row is made."""

    users: dict[str, list[str]] = field(default_factory=dict)
    items: dict[str, list[str]] = field(default_factory=dict)

    def user_hashes(self, uid: str) -> list[int]:
        feats = [f"u={uid}"] + self.users.get(uid, [])
        return [stable_hash64(f) for f in feats[:MAX_USER_FEATURES]]

    def item_hashes(self, iid: str) -> list[int]:
        feats = [f"i={iid}"] + self.items.get(iid, [])
        return [stable_hash64(f) for f in feats[:MAX_ITEM_FEATURES]]


def fill_rows(store: FeatureStore | None, ids, rows: np.ndarray, feat: np.ndarray, nfeat: np.ndarray, kind: str):
    """Write the feature hashes of ``ids`` into ``feat[rows]``/``nfeat[rows]``."""
    for ext, r in zip(ids, rows):
        if store is None:
            hs = [stable_hash64(("u=" if kind == "user" else "i=") + ext)]
        elif kind == "user":
            hs = store.user_hashes(ext)
        else:
            hs = store.item_hashes(ext)
        n = min(len(hs), feat.shape[1])
        feat[r, :n] = np.array(hs[:n], dtype=np.uint64)
        nfeat[r] = n


def fill_user_rows(store: FeatureStore | None, users, rows: np.ndarray) -> None:
    """Feature rows of the user rows ``rows`` (of a ``UserState``) that have none yet."""
    ua = users.arrays
    nu = ua["feat.nu"]
    new = np.unique(rows[nu[rows] == 0])
    if len(new):
        fill_rows(store, [users.ids.ids[r] for r in new], new, ua["feat.u"], nu, "user")


def fill_item_rows(store: FeatureStore | None, items, start: int = 0) -> int:
    """Feature rows of every item row of ``items`` (an ``ItemState``) from ``start`` on that
    has none yet, not only of a batch's items: a ranking or a list scores the whole catalog,
    and rows restored from a checkpoint or made by another worker come without them (they
    are never stored or sent). Returns the number of rows, the next call's ``start``."""
    n = len(items)
    if n <= start:
        return start
    ia = items.arrays
    ni = ia["feat.ni"]
    rows = start + np.flatnonzero(ni[start:n] == 0)
    if len(rows):
        ids = items.ids.ids
        fill_rows(store, [ids[r] for r in rows], rows, ia["feat.i"], ni, "item")
    return n
