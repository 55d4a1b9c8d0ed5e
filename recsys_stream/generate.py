"""A seeded generator of interaction streams with planted structure, in one of two shapes.

``shape="groups"`` (the default; small catalogs): the catalog is split into ``groups``
(think genres); within a group, items sit in a sequence (think episodes), and a Zipf law
makes a few items of each group popular. Every user has a favourite group and a second
one. Each event picks a user by activity (log-normal, so a few users are heavy), then an
item:

- with probability ``locality``, a near successor of the user's last item in its group
  (sequences: what item-to-item CF should find);
- otherwise a group drawn from the user's preferences (0.55 favourite, 0.25 second,
  0.20 anything) and an item from it by popularity (what factor models should find);

never an item the user already had (redrawn a few times). The rating is
``round(3 + affinity + quality_i + bias_u + noise)`` clipped to 1..5, where affinity is +1
for the favourite group, +0.5 for the second and -0.5 otherwise, so a rating model has
user, item and user x group structure to learn. With ``typed=True`` events are views,
clicks, add-to-carts and purchases instead, purchases likelier on favourite groups.

``shape="zipf"`` (large catalogs, 10^6 items and more): item popularity follows one Zipf
law over the whole catalog, the item of popularity rank ``r`` (``perm[r]``, a seeded
shuffle of the rows) weighing ``w(r) = (r + 1) ** -zipf``. The ranks are dealt round-robin
to ``groups`` taste clusters: cluster ``c`` holds ranks ``c, c + C, c + 2C, ...``, so its
local rank ``p`` is global rank ``p * C + c`` and inside a cluster popularity is Zipf with
the same exponent. Each user belongs to one cluster, drawn by the clusters' shares of the
total weight, so that summed over users items are drawn by the global law. Each event
picks a user by activity (log-normal), then an item:

- with probability ``locality``, a sequential move: a step of 1..8 places (geometric,
  either way) from the user's last item in its cluster's popularity order, accepted
  with probability ``min(1, w_new / w_old)``; a rejected step jumps to an item of that
  cluster drawn by where steps are rejected (``w(p) x P(reject | p)``). This Metropolis
  walk leaves the cluster's law exactly as it is while a user's consecutive items are
  neighbours (what item-to-item CF should find);
- otherwise a popularity draw: with probability ``outside`` from the whole catalog, else
  from the user's cluster (what factor models and popularity should find);

never an item the user already had (redrawn a few times). Without that rule the counts
would follow the Zipf law (in expectation); with it, where a cluster's users exhaust its
head (heavy users, or many clusters, each then dominated by its top item) the head of
the rank-frequency curve bends flatter and a few events are repeats. Fitted over the
ranks from 10 to the last with 20 events, at 2,000,000 events, 100,000 users and
1,000,000 items: slope -1.03 with 0.8% repeats for the defaults (``zipf=1.1``, 20
clusters); -0.67 with 3.6% for ``zipf=1.0`` and 1000 clusters. The rating (or typed
event) is made as above, with affinity +1 inside the user's cluster and -0.5 outside.

Memory is O(1) per item (two CDFs, the rank permutation and a quality: 32 bytes, plus a
name for each item that occurs), per user (about 40 bytes) and per event (the outputs
and the "already had" set, a power of two >= 4 x events of 8 bytes); 2,000,000 events
over 1,000,000 items take about 2 s on one core.
``planted`` returns what was planted (items' ranks and clusters, users' clusters).

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

SHAPES = ("groups", "zipf")


@dataclass(frozen=True)
class GeneratorSettings:
    """What to generate; ``shape`` picks the model (see the module docstring). ``groups``
    is the number of groups (``zipf``: taste clusters), ``zipf`` the popularity exponent,
    ``locality`` the share of sequential steps and ``outside`` (``zipf`` shape only) the
    share of popularity draws taken from the whole catalog instead of the user's cluster."""

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
    shape: str = "groups"
    outside: float = 0.2

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        for name in ("events", "users", "items", "groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.items < self.groups:
            raise ValueError("need at least one item per group")
        if max(self.users, self.items) >= 2**31:
            raise ValueError("users and items must be < 2**31")
        for name in ("locality", "outside"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1]")
        if not self.zipf >= 0.0:
            raise ValueError("zipf must be >= 0")


@njit(cache=True)
def _shuffled(n, rng):
    """0 .. n-1 in a seeded random order (Fisher-Yates, from the end)."""
    perm = np.arange(n)
    for a in range(n - 1, 0, -1):
        b = rng_below(rng, a + 1)
        perm[a], perm[b] = perm[b], perm[a]
    return perm


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
def _outcome(typed, aff, base, rng):
    """(event type, value) of one event: with ``typed`` a view, click, add-to-cart or
    purchase (purchases likelier with affinity); otherwise a rating ``round(base +
    noise)`` clipped to 1..5."""
    if typed:
        x = rng_uniform(rng) - 0.08 * aff
        if x < 0.05:
            return 4, 1.0  # purchase
        if x < 0.13:
            return 3, 1.0  # add_to_cart
        if x < 0.38:
            return 2, 1.0  # click
        return 1, 1.0  # view
    r = base + 0.7 * rng_normal(rng)
    r = math.floor(r + 0.5)
    return 0, min(5.0, max(1.0, r))


@njit(cache=True)
def _activity_cdf(n_users, rng):
    """Users' cumulative activity (log-normal weights)."""
    act = np.empty(n_users)
    for u in range(n_users):
        act[u] = math.exp(1.0 * rng_normal(rng))
    ucdf = np.cumsum(act / act.sum())
    ucdf[-1] = 1.0
    return ucdf


@njit(cache=True)
def _generate(n_events, n_users, n_items, n_groups, locality, zipf, typed, gap, seed, start, seen,
              out_u, out_i, out_t, out_type, out_v):
    rng = np.empty(1, dtype=np.uint64)
    rng[0] = np.uint64(seed)
    # users: activity, preferences, bias
    ucdf = _activity_cdf(n_users, rng)
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
        perm = _shuffled(m, rng)
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
        out_type[e], out_v[e] = _outcome(typed, aff, 3.0 + aff + quality[item] + ubias[u], rng)


MAX_STEP = 8  # the longest step of a sequential move (1..8, geometric)


@njit(cache=True)
def _zipf_layout(n_items, n_clusters, zipf):
    """Cluster c holds the global popularity ranks c, c + C, c + 2C, ...: returns (ccdf,
    rcdf, first, size, mass) where ``ccdf[first[c]:first[c] + size[c]]`` is cluster c's
    cumulative Zipf distribution over its local ranks, ``rcdf`` (same layout) the
    cumulative distribution of where a sequential step is rejected (``w(p) x
    P(reject | p)``: drawing the item after a rejection from it keeps the cluster's law
    invariant under the walk), and ``mass`` the clusters' cumulative shares of the total
    weight (a cluster drawn by ``mass``, then a rank by its ccdf, is a draw from the
    global law)."""
    step_p = np.empty(MAX_STEP + 1)  # P(step = s), as the walk draws it
    step_p[0] = 0.0
    for s in range(1, MAX_STEP + 1):
        step_p[s] = math.pow(0.5, min(s, MAX_STEP - 1))
    size = np.empty(n_clusters, dtype=np.int64)
    first = np.empty(n_clusters, dtype=np.int64)
    mass = np.empty(n_clusters)
    ccdf = np.empty(n_items)
    rcdf = np.empty(n_items)
    at = 0
    for c in range(n_clusters):
        m = (n_items - c + n_clusters - 1) // n_clusters
        size[c] = m
        first[c] = at
        acc = 0.0
        racc = 0.0
        for p in range(m):
            w = math.pow(p * n_clusters + c + 1.0, -zipf)
            reject = 0.0
            for s in range(1, MAX_STEP + 1):
                if p - s < 0:
                    reject += 0.5 * step_p[s]  # towards the head: out of range, else accepted
                if p + s >= m:
                    reject += 0.5 * step_p[s]
                else:
                    ratio = math.pow((p * n_clusters + c + 1.0) / ((p + s) * n_clusters + c + 1.0), zipf)
                    reject += 0.5 * step_p[s] * (1.0 - ratio)
            acc += w
            racc += w * reject
            ccdf[at + p] = acc
            rcdf[at + p] = racc
        for p in range(m):
            ccdf[at + p] /= acc
            rcdf[at + p] /= racc  # > 0: a step from local rank 0 towards the head is always rejected
        ccdf[at + m - 1] = 1.0
        rcdf[at + m - 1] = 1.0
        mass[c] = acc
        at += m
    mass = np.cumsum(mass / mass.sum())
    mass[-1] = 1.0
    return ccdf, rcdf, first, size, mass


@njit(cache=True)
def _zipf_setup(n_users, n_items, n_clusters, zipf, rng):
    """The planted structure of the ``zipf`` shape: the clusters' layout (see
    ``_zipf_layout``), the users' activity CDF, clusters and biases, and the items of the
    popularity ranks (``perm``, a seeded shuffle) with their qualities (by rank)."""
    ccdf, rcdf, first, size, mass = _zipf_layout(n_items, n_clusters, zipf)
    ucdf = _activity_cdf(n_users, rng)
    ucl = np.empty(n_users, dtype=np.int64)
    ubias = np.empty(n_users)
    for u in range(n_users):
        ucl[u] = _pick(mass, rng)
        ubias[u] = 0.4 * rng_normal(rng)
    perm = _shuffled(n_items, rng)
    quality = np.empty(n_items)
    for r in range(n_items):
        quality[r] = 0.5 * rng_normal(rng)
    return ccdf, rcdf, first, size, mass, ucdf, ucl, ubias, perm, quality


@njit(cache=True)
def _generate_zipf(n_events, n_users, n_items, n_clusters, locality, zipf, outside, typed, gap, seed, start, seen,
                   out_u, out_i, out_t, out_type, out_v):
    rng = np.empty(1, dtype=np.uint64)
    rng[0] = np.uint64(seed)
    C = n_clusters
    ccdf, rcdf, first, size, mass, ucdf, ucl, ubias, perm, quality = _zipf_setup(n_users, n_items, C, zipf, rng)
    last = np.full(n_users, -1, dtype=np.int64)  # the popularity rank of the user's last item
    cnt = np.zeros(1, dtype=np.int64)
    t = start
    for e in range(n_events):
        u = _pick(ucdf, rng)
        rank = -1
        cand = 0
        for _attempt in range(8):
            r0 = last[u]
            if r0 >= 0 and rng_uniform(rng) < locality:
                # a Metropolis step in the cluster's popularity order: towards the head
                # always, towards the tail by the weights' ratio
                c = r0 % C
                p = r0 // C
                step = 1
                while rng_uniform(rng) < 0.5 and step < MAX_STEP:
                    step += 1
                q = p - step if rng_uniform(rng) < 0.5 else p + step
                if 0 <= q < size[c] and (q < p or rng_uniform(rng) < math.pow((r0 + 1.0) / (q * C + c + 1.0), zipf)):
                    cand = q * C + c
                else:
                    cand = _pick(rcdf[first[c]:first[c] + size[c]], rng) * C + c
            else:
                c = _pick(mass, rng) if rng_uniform(rng) < outside else ucl[u]
                cand = _pick(ccdf[first[c]:first[c] + size[c]], rng) * C + c
            if not pairset_contains(seen, u, perm[cand]):
                rank = cand
                break
        if rank < 0:
            rank = cand  # a repeat: rare, and the protocol counts it as a miss
        item = perm[rank]
        pairset_add(seen, cnt, u, item)
        last[u] = rank
        aff = 1.0 if rank % C == ucl[u] else -0.5
        t += -gap * math.log(1.0 - rng_uniform(rng))
        out_u[e] = u
        out_i[e] = item
        out_t[e] = t
        out_type[e], out_v[e] = _outcome(typed, aff, 3.0 + aff + quality[rank] + ubias[u], rng)


def _names(prefix: str, rows: np.ndarray, n: int) -> np.ndarray:
    """``prefix + str(row)`` for every row (an object array); when rows are not many more
    than the ``n`` names, a name only for each row that occurs (a large catalog)."""
    if 4 * n <= rows.shape[0]:
        return np.array([f"{prefix}{x}" for x in range(n)], dtype=object)[rows]
    used, inverse = np.unique(rows, return_inverse=True)
    return np.array([f"{prefix}{x}" for x in used.tolist()], dtype=object)[inverse.reshape(-1)]


def generate(settings: GeneratorSettings = GeneratorSettings()) -> EventBatch:
    """Generate a stream (in event-time order) as one ``EventBatch``; deterministic for
    the settings. A large catalog:

    >>> s = GeneratorSettings(shape="zipf", events=3_000, users=200, items=100_000, groups=50, seed=1)
    >>> b = generate(s)
    >>> len(b), b.user[0][0], b.item[0][0], bool(np.all(np.diff(b.ts) >= 0))
    (3000, 'u', 'i', True)
    >>> bool(np.array_equal(generate(s).item, b.item)), len(set(b.item)) <= s.items
    (True, True)
    """
    s = settings
    n = s.events
    u = np.empty(n, dtype=np.int64)
    i = np.empty(n, dtype=np.int64)
    t = np.empty(n, dtype=np.float64)
    ty = np.empty(n, dtype=np.int8)
    v = np.empty(n, dtype=np.float32)
    seen = pairset_new(4 * n + 16)  # load stays under 1/4
    if s.shape == "zipf":
        _generate_zipf(n, s.users, s.items, s.groups, s.locality, s.zipf, s.outside, s.typed, s.gap_s, s.seed,
                       s.start_ts, seen, u, i, t, ty, v)
    else:
        _generate(n, s.users, s.items, s.groups, s.locality, s.zipf, s.typed, s.gap_s, s.seed, s.start_ts, seen,
                  u, i, t, ty, v)
    del seen
    assert EVENT_TYPES["purchase"] == 4 and RATING == 0
    return EventBatch(_names("u", u, s.users), _names("i", i, s.items), t, ty, v, np.arange(n, dtype=np.int64),
                      np.full(n, -1, dtype=np.int32), np.arange(n, dtype=np.int64))


@dataclass(frozen=True)
class Planted:
    """The hidden structure of a ``zipf``-shape stream, indexed by row (item ``i<row>``,
    user ``u<row>``): each item's popularity rank (0: the most popular) and taste cluster,
    and each user's cluster."""

    item_rank: np.ndarray  # int64
    item_cluster: np.ndarray  # int64
    user_cluster: np.ndarray  # int64


def planted(settings: GeneratorSettings) -> Planted:
    """What ``generate(settings)`` planted (``zipf`` shape), for tests and benchmarks:

    >>> s = GeneratorSettings(shape="zipf", events=2_000, users=100, items=5_000, groups=10, seed=2)
    >>> p, b = planted(s), generate(s)
    >>> users = np.array([int(x[1:]) for x in b.user]); items = np.array([int(x[1:]) for x in b.item])
    >>> bool(np.mean(p.item_cluster[items] == p.user_cluster[users]) > 0.7)
    True
    """
    s = settings
    if s.shape != "zipf":
        raise ValueError(f"planted: only the zipf shape, got {s.shape!r}")
    rng = np.array([s.seed], dtype=np.uint64)
    *_, user_cluster, _bias, perm, _quality = _zipf_setup(s.users, s.items, s.groups, s.zipf, rng)
    rank = np.empty_like(perm)
    rank[perm] = np.arange(s.items)
    return Planted(rank, rank % s.groups, user_cluster)
