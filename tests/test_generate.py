"""The generator (``recsys_stream.generate``): the default ``groups`` shape is unchanged,
and the large-catalog ``zipf`` shape is deterministic, stays in its catalog, and has the
structure it promises: a Zipf rank-frequency curve, users concentrated in their taste
cluster, consecutive items that are neighbours, a walk that keeps the cluster's law."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from recsys_stream.generate import MAX_STEP, GeneratorSettings, _zipf_layout, generate, planted


def rows(names: np.ndarray) -> np.ndarray:
    """``u12`` / ``i12`` -> 12."""
    return np.array([int(x[1:]) for x in names], dtype=np.int64)


def digest(b) -> str:
    h = hashlib.sha256()
    for a in (b.user, b.item):
        h.update("\n".join(a.tolist()).encode())
    for a in (b.etype, b.value):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def slope(counts: np.ndarray, lo: int = 100, min_count: int = 20) -> float:
    """The fitted slope of log(count) against log(rank), over the ranks from ``lo`` to the
    last with ``min_count`` events (beyond it, counts are mostly sampling noise)."""
    c = np.sort(counts)[::-1]
    hi = int((c >= min_count).sum())
    assert hi > 3 * lo, "too few events for a fit"
    r = np.arange(1, hi + 1)
    sel = r >= lo
    return float(np.polyfit(np.log(r[sel]), np.log(c[:hi][sel]), 1)[0])


# -- the default shape --------------------------------------------------------------


def test_groups_is_the_default_and_its_stream_is_unchanged():
    s = GeneratorSettings(events=5_000, users=300, items=200, seed=3)
    assert s.shape == "groups"
    # the stream of the generator before the zipf shape was added (users, items, types, values)
    assert digest(generate(s)) == "9d58e4ce1bdb7d1f"


# -- the zipf shape -----------------------------------------------------------------

SMALL = GeneratorSettings(shape="zipf", events=20_000, users=1_000, items=50_000, groups=25, seed=5)


def test_zipf_is_deterministic_for_a_seed():
    a, b = generate(SMALL), generate(SMALL)
    for col in ("user", "item", "ts", "etype", "value", "seq"):
        assert np.array_equal(getattr(a, col), getattr(b, col)), col
    other = generate(GeneratorSettings(**{**SMALL.__dict__, "seed": 6}))
    assert not np.array_equal(a.item, other.item)
    pa, pb = planted(SMALL), planted(SMALL)
    assert np.array_equal(pa.item_rank, pb.item_rank) and np.array_equal(pa.user_cluster, pb.user_cluster)


def test_zipf_sizes_ids_times_and_values():
    b = generate(SMALL)
    assert len(b) == SMALL.events
    assert all(len(col) == SMALL.events for col in (b.user, b.item, b.ts, b.etype, b.value, b.seq))
    u, i = rows(b.user), rows(b.item)
    assert u.min() >= 0 and u.max() < SMALL.users
    assert i.min() >= 0 and i.max() < SMALL.items
    assert np.all(np.diff(b.ts) >= 0) and b.ts[0] > SMALL.start_ts and b.ts[-1] > b.ts[0]
    assert set(np.unique(b.etype)) == {0} and set(np.unique(b.value)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert np.array_equal(b.seq, np.arange(len(b)))
    repeats = 1 - len(set(zip(u.tolist(), i.tolist()))) / len(b)
    assert repeats < 0.02
    typed = generate(GeneratorSettings(**{**SMALL.__dict__, "typed": True}))
    assert set(np.unique(typed.etype)) == {1, 2, 3, 4} and set(np.unique(typed.value)) == {1.0}


def test_zipf_million_item_catalog_stays_in_it():
    s = GeneratorSettings(shape="zipf", events=30_000, users=3_000, items=1_000_000, groups=100, seed=8)
    b, p = generate(s), planted(s)
    i = rows(b.item)
    assert i.min() >= 0 and i.max() < s.items
    assert len(p.item_rank) == s.items and len(p.user_cluster) == s.users
    assert np.array_equal(np.sort(p.item_rank), np.arange(s.items))  # a permutation
    assert np.array_equal(p.item_cluster, p.item_rank % s.groups)
    # the long tail: most events' items are rare, yet the head is popular
    counts = np.bincount(i, minlength=s.items)
    assert (counts > 0).sum() > 10_000 and counts.max() > 100


@pytest.mark.parametrize("a", [0.8, 1.0, 1.2])
def test_zipf_rank_frequency_slope_follows_the_exponent(a):
    # many light users, so that having an item at most once hardly bends the curve
    s = GeneratorSettings(shape="zipf", events=200_000, users=50_000, items=100_000, groups=50, zipf=a, seed=1)
    i = rows(generate(s).item)
    got = slope(np.bincount(i, minlength=s.items))
    assert abs(got + a) < 0.15, got
    # the planted ranks order the counts: the top 20 ranks far above ranks 1000..1019
    rank = planted(s).item_rank[i]
    assert (rank < 20).sum() > 10 * ((rank >= 1000) & (rank < 1020)).sum()


def test_zipf_steeper_exponent_steeper_curve():
    got = [slope(np.bincount(rows(generate(GeneratorSettings(shape="zipf", events=100_000, users=20_000,
                                                             items=50_000, zipf=a, seed=2)).item),
                             minlength=50_000))
           for a in (0.7, 1.0, 1.3)]
    assert got[0] > got[1] > got[2]


def cluster_share(s: GeneratorSettings) -> tuple[float, float]:
    """(the share of events whose item is in the user's cluster, the share expected if
    users and items were independent)."""
    b, p = generate(s), planted(s)
    uc, ic = p.user_cluster[rows(b.user)], p.item_cluster[rows(b.item)]
    inside = float(np.mean(uc == ic))
    chance = float(np.sum(np.bincount(uc, minlength=s.groups) * np.bincount(ic, minlength=s.groups))) / len(b) ** 2
    return inside, chance


def test_zipf_users_concentrate_in_their_cluster():
    s = GeneratorSettings(shape="zipf", events=100_000, users=5_000, items=100_000, groups=40, seed=3)
    inside, chance = cluster_share(s)
    assert inside > 0.6 and inside > 10 * chance, (inside, chance)
    # per user too: most users with 20+ events have most of them in their cluster (by
    # chance: about 1 in 40)
    b, p = generate(s), planted(s)
    u = rows(b.user)
    hit = p.user_cluster[u] == p.item_cluster[rows(b.item)]
    n = np.bincount(u, minlength=s.users)
    share = np.bincount(u, weights=hit, minlength=s.users)[n >= 20] / n[n >= 20]
    assert np.median(share) > 0.6 and np.mean(share > 0.5) > 0.65
    # and without clusters (every draw from the whole catalog, no walk) nothing concentrates
    inside, chance = cluster_share(GeneratorSettings(**{**s.__dict__, "outside": 1.0, "locality": 0.0}))
    assert abs(inside - chance) < 0.02, (inside, chance)


def neighbour_share(s: GeneratorSettings) -> float:
    """The share of a user's consecutive items that are at most MAX_STEP places apart in
    one cluster's popularity order."""
    b, p = generate(s), planted(s)
    u = rows(b.user)
    order = np.argsort(u, kind="stable")  # each user's events in time order
    uu, rank = u[order], p.item_rank[rows(b.item)[order]]
    same = uu[1:] == uu[:-1]
    a, c = rank[:-1][same], rank[1:][same]
    g = s.groups
    return float(np.mean((a % g == c % g) & (np.abs(a // g - c // g) <= MAX_STEP)))


def test_zipf_consecutive_items_are_neighbours():
    s = GeneratorSettings(shape="zipf", events=100_000, users=5_000, items=100_000, groups=40, locality=0.5, seed=4)
    assert neighbour_share(s) > 0.4
    assert neighbour_share(GeneratorSettings(**{**s.__dict__, "locality": 0.9})) > 0.7
    assert neighbour_share(GeneratorSettings(**{**s.__dict__, "locality": 0.0})) < 0.1


@pytest.mark.parametrize("a", [0.6, 1.1])
def test_zipf_walk_keeps_the_cluster_law(a):
    """The sequential move's transition matrix, built from its rules (a step of 1..8
    places, geometric, either way; Metropolis acceptance; a rejected step jumps by
    ``rcdf``), leaves each cluster's Zipf law invariant."""
    n_items, n_clusters = 90, 3
    ccdf, rcdf, first, size, _mass = _zipf_layout(n_items, n_clusters, a)
    step_p = {s: 0.5 ** min(s, MAX_STEP - 1) for s in range(1, MAX_STEP + 1)}
    assert abs(sum(step_p.values()) - 1) < 1e-12
    for c in range(n_clusters):
        m = size[c]
        w = np.array([(p * n_clusters + c + 1.0) ** -a for p in range(m)])
        pi = np.diff(ccdf[first[c]:first[c] + m], prepend=0.0)
        assert np.allclose(pi, w / w.sum())
        jump = np.diff(rcdf[first[c]:first[c] + m], prepend=0.0)
        k = np.zeros((m, m))
        for p in range(m):
            for s, ps in step_p.items():
                for q in (p - s, p + s):
                    accept = 0.0 if not 0 <= q < m else (1.0 if q < p else w[q] / w[p])
                    if accept:
                        k[p, q] += 0.5 * ps * accept
            k[p] += (1.0 - k[p].sum()) * jump
        assert np.allclose(k.sum(axis=1), 1.0)
        assert np.allclose(pi @ k, pi, atol=1e-12)


def test_settings_are_checked():
    for bad in ({"shape": "nope"}, {"outside": 1.5}, {"locality": -0.1}, {"zipf": -1.0}, {"items": 10, "groups": 11},
                {"items": 0}):
        with pytest.raises(ValueError):
            GeneratorSettings(**bad)
    with pytest.raises(ValueError, match="zipf shape"):
        planted(GeneratorSettings())


def test_cli_generate_writes_the_zipf_shape(tmp_path):
    from recsys_stream.cli import main
    from recsys_stream.io.readers import read_events

    out = tmp_path / "z.jsonl"
    assert main(["generate", str(out), "--shape", "zipf", "--events", "3000", "--users", "200", "--items", "200000",
                 "--groups", "10", "--zipf", "1.0", "--seed", "4"]) == 0
    got = read_events(str(out)).events
    want = generate(GeneratorSettings(shape="zipf", events=3_000, users=200, items=200_000, groups=10, zipf=1.0,
                                      seed=4))
    assert list(got.user) == list(want.user) and list(got.item) == list(want.item)
    assert np.array_equal(got.value, want.value)
