"""A seeded generator of interaction streams with planted structure.

The catalog is split into ``groups`` (think genres); within a group, items sit in a
sequence (think episodes), and a Zipf law makes a few items of each group popular.
Every user has a favourite group and a second one. Each event picks a user by activity
(log-normal, so a few users are heavy), then an item:

- with probability ``locality``, a near successor of the user's last item in its group
  (sequences: what item-to-item CF should find);
- otherwise a group drawn from the user's preferences (0.55 favourite, 0.25 second,
  0.20 anything) and an item from it by popularity (what factor models should find);

never an item the user already had (redrawn a few times). The rating is
``round(3 + affinity + quality_i + bias_u + noise)`` clipped to 1..5, where affinity is +1
for the favourite group, +0.5 for the second and -0.5 otherwise, so a rating model has
user, item and user x group structure to learn. With ``typed=True`` events are views,
clicks, add-to-carts and purchases instead, purchases likelier on favourite groups.

Event times start at 2024-01-01 and advance by exponential gaps (mean ``gap_s``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from .events import EVENT_TYPES, RATING, EventBatch
from .kernels.common import rng_below, rng_normal, rng_uniform
from .kernels.pairset import pairset_add, pairset_contains, pairset_new


@dataclass(frozen=True)
class GeneratorSettings:
    events: int = 100_000
    users: int = 2_000
    items: int = 1_000
    groups: int = 20
    locality: float = 0.5
    zipf: float = 1.1
    typed: bool = False
    gap_s: float = 1.0
    seed: int = 7
    start_ts: float = 1_704_067_200.0  # 2024-01-01T00:00:00Z

    def __post_init__(self):
        for name in ("events", "users", "items", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.items < self.groups:
            raise ValueError("need at least one item per group")
        if not 0.0 <= self.locality <= 1.0:
            raise ValueError("locality must be in [0, 1]")


@njit(cache=True)
def _pick(cdf, rng):
    """Index drawn from an increasing cumulative distribution ending at 1."""
    x = rng_uniform(rng)
    lo = 0
    hi = cdf.shape[0] - 1
    while lo < hi:
        mid = (lo + hi) // 2
        if cdf[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo


@njit(cache=True)
def _generate(n_events, n_users, n_items, n_groups, locality, zipf, typed, gap, seed, start, seen,
              out_u, out_i, out_t, out_type, out_v):
    rng = np.empty(1, dtype=np.uint64)
    rng[0] = np.uint64(seed)
    # users: activity, preferences, bias
    act = np.empty(n_users)
    for u in range(n_users):
        act[u] = math.exp(1.0 * rng_normal(rng))
    ucdf = np.cumsum(act / act.sum())
    ucdf[-1] = 1.0
    fav = np.empty(n_users, dtype=np.int64)
    second = np.empty(n_users, dtype=np.int64)
    ubias = np.empty(n_users)
    for u in range(n_users):
        fav[u] = rng_below(rng, n_groups)
        s = rng_below(rng, n_groups - 1) if n_groups > 1 else 0
        second[u] = s if s < fav[u] else s + 1
        if n_groups == 1:
            second[u] = 0
        ubias[u] = 0.4 * rng_normal(rng)
    # items: group g holds rows g, g + G, g + 2G, ...; Zipf popularity inside the group
    group_size = np.zeros(n_groups, dtype=np.int64)
    for i in range(n_items):
        group_size[i % n_groups] += 1
    max_size = group_size.max()
    zcdf = np.zeros((n_groups, max_size))
    for g in range(n_groups):
        m = group_size[g]
        # popularity rank within the group is a seeded shuffle of positions
        perm = np.arange(m)
        for a in range(m - 1, 0, -1):
            b = rng_below(rng, a + 1)
            perm[a], perm[b] = perm[b], perm[a]
        w = np.empty(m)
        for p in range(m):
            w[p] = 1.0 / math.pow(perm[p] + 1.0, zipf)
        c = np.cumsum(w / w.sum())
        c[-1] = 1.0
        zcdf[g, :m] = c
    quality = np.empty(n_items)
    for i in range(n_items):
        quality[i] = 0.5 * rng_normal(rng)
    last = np.full(n_users, -1, dtype=np.int64)
    cnt = np.zeros(1, dtype=np.int64)
    t = start
    for e in range(n_events):
        u = _pick(ucdf, rng)
        item = -1
        for _attempt in range(8):
            if last[u] >= 0 and rng_uniform(rng) < locality:
                g = last[u] % n_groups
                pos = last[u] // n_groups
                step = 1
                while rng_uniform(rng) < 0.5 and step < 8:
                    step += 1
                pos = (pos + step) % group_size[g]
                cand = pos * n_groups + g
            else:
                x = rng_uniform(rng)
                if x < 0.55:
                    g = fav[u]
                elif x < 0.80:
                    g = second[u]
                else:
                    g = rng_below(rng, n_groups)
                m = group_size[g]
                pos = _pick(zcdf[g, :m], rng)
                cand = pos * n_groups + g
            if not pairset_contains(seen, u, cand):
                item = cand
                break
        if item < 0:
            item = cand  # a repeat: rare, and the protocol counts it as a miss
        pairset_add(seen, cnt, u, item)
        last[u] = item
        g = item % n_groups
        aff = 1.0 if g == fav[u] else (0.5 if g == second[u] else -0.5)
        t += -gap * math.log(1.0 - rng_uniform(rng))
        out_u[e] = u
        out_i[e] = item
        out_t[e] = t
        if typed:
            x = rng_uniform(rng) - 0.08 * aff
            if x < 0.05:
                out_type[e] = 4  # purchase
            elif x < 0.13:
                out_type[e] = 3  # add_to_cart
            elif x < 0.38:
                out_type[e] = 2  # click
            else:
                out_type[e] = 1  # view
            out_v[e] = 1.0
        else:
            r = 3.0 + aff + quality[item] + ubias[u] + 0.7 * rng_normal(rng)
            r = math.floor(r + 0.5)
            out_type[e] = 0
            out_v[e] = min(5.0, max(1.0, r))


def generate(settings: GeneratorSettings = GeneratorSettings()) -> EventBatch:
    """Generate a stream (in event-time order) as one ``EventBatch``."""
    s = settings
    n = s.events
    u = np.empty(n, dtype=np.int64)
    i = np.empty(n, dtype=np.int64)
    t = np.empty(n, dtype=np.float64)
    ty = np.empty(n, dtype=np.int8)
    v = np.empty(n, dtype=np.float32)
    seen = pairset_new(4 * n + 16)  # load stays under 1/4
    _generate(n, s.users, s.items, s.groups, s.locality, s.zipf, s.typed, s.gap_s, s.seed, s.start_ts, seen,
              u, i, t, ty, v)
    uid = np.array([f"u{x}" for x in range(s.users)], dtype=object)
    iid = np.array([f"i{x}" for x in range(s.items)], dtype=object)
    assert EVENT_TYPES["purchase"] == 4 and RATING == 0
    return EventBatch(uid[u], iid[i], t, ty, v, np.arange(n, dtype=np.int64), np.full(n, -1, dtype=np.int32),
                      np.arange(n, dtype=np.int64))
