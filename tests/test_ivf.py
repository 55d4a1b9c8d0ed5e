"""The inverted-file index (``kernels.ivf``, ``ann.IVFIndex``) against the exact ranking
(``score_factors`` + ``topk_masked``, the project's protocol) on small random and
clustered factors."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_stream.ann import IVFIndex, default_nlist
from recsys_stream.kernels.topk import score_factors, topk_masked

DIM = 8


def random_factors(n, dim=DIM, seed=0):
    rng = np.random.default_rng(seed)
    Q = rng.normal(0.0, 1.0 / np.sqrt(dim), (n, dim)).astype(np.float32)
    b = rng.normal(0.0, 0.3, n)
    return Q, b


def clustered_factors(n, dim=DIM, clusters=12, seed=0):
    """Items around a few centres (learned factors look like this; random ones are the
    hard case), with a popularity-like bias."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (clusters, dim))
    c = rng.integers(0, clusters, n)
    Q = (centres[c] + rng.normal(0.0, 0.15, (n, dim))).astype(np.float32)
    b = rng.normal(0.0, 0.3, n) - 0.2 * rng.exponential(1.0, n)
    return Q, b


def queries(m, dim=DIM, seed=1):
    return np.random.default_rng(seed).normal(0.0, 1.0, (m, dim)).astype(np.float32)


def exact(p, Q, b, n_cat, excl, active, k):
    scores = np.empty(n_cat)
    score_factors(p, Q, b, n_cat, scores)
    idx = np.empty(k, dtype=np.int64)
    sc = np.empty(k)
    c = topk_masked(scores, n_cat, excl, active, k, idx, sc)
    return idx[:c], sc[:c]


def exact_numpy(p, Q, b, rows):
    return b[rows] + Q[rows].astype(np.float64) @ p.astype(np.float64)


def masks(n, seed=2, frac=0.1):
    rng = np.random.default_rng(seed)
    excl = (rng.random(n) < frac).astype(np.uint8)
    active = (rng.random(n) > 0.05).astype(np.uint8)
    return excl, active


def assert_same_as_exact(ix, Q, b, n_cat, excl, active, k, P, **kw):
    for p in P:
        want, want_sc = exact(p, Q, b, n_cat, excl, active, k)
        idx, sc, c = ix.search(p, Q, b, n_cat, excl, active, k, **kw)
        assert c == len(want)
        assert idx[:c].tolist() == want.tolist()
        np.testing.assert_allclose(sc[:c], exact_numpy(p, Q, b, idx[:c]), rtol=1e-5, atol=1e-6)
        assert (idx[c:] == -1).all() and np.isneginf(sc[c:]).all()


def recall(ix, Q, b, n_cat, excl, active, k, P, **kw):
    hits = 0
    for p in P:
        want, _ = exact(p, Q, b, n_cat, excl, active, k)
        idx, _, c = ix.search(p, Q, b, n_cat, excl, active, k, **kw)
        hits += len(set(want.tolist()) & set(idx[:c].tolist()))
    return hits / (k * len(P))


@pytest.mark.parametrize("metric", ["aug", "ip"])
@pytest.mark.parametrize("storage", ["int8", "float32"])
@pytest.mark.parametrize("data", [random_factors, clustered_factors])
def test_probing_every_list_is_exact(metric, storage, data):
    n = 3000
    Q, b = data(n)
    ix = IVFIndex(DIM, metric=metric, storage=storage, seed=3).build(Q, b, n)
    ix.check()
    assert len(ix) == n and ix.nlist == default_nlist(n)
    excl, active = masks(n)
    # every list and every row a candidate: the exact ranking, with the mask
    assert_same_as_exact(ix, Q, b, n, excl, active, 10, queries(20), nprobe=ix.nlist, cand=n)
    # every list, a few candidates: the exact top-10 still (the copies' error is small)
    assert recall(ix, Q, b, n, excl, active, 10, queries(20), nprobe=ix.nlist) >= 0.99


def test_mask_catalog_extent_and_retired_items():
    n = 2000
    Q, b = random_factors(n)
    ix = IVFIndex(DIM, seed=1).build(Q, b, n)
    excl, active = masks(n, frac=0.5)
    for p in queries(10):
        idx, _, c = ix.search(p, Q, b, 1500, excl, active, 50, nprobe=ix.nlist, cand=n)
        got = idx[:c]
        assert c == 50
        assert (excl[got] == 0).all() and (active[got] == 1).all() and (got < 1500).all()
    # the best rows excluded: they are not returned, the next best are
    p = queries(1)[0]
    top, _ = exact(p, Q, b, n, np.zeros(n, np.uint8), np.ones(n, np.uint8), 5)
    excl = np.zeros(n, np.uint8)
    excl[top] = 1
    assert_same_as_exact(ix, Q, b, n, excl, np.ones(n, np.uint8), 5, [p], nprobe=ix.nlist, cand=n)
    # more rows wanted than are eligible: the count says so
    active = np.zeros(n, np.uint8)
    active[[3, 700, 1999]] = 1
    idx, sc, c = ix.search(p, Q, b, n, np.zeros(n, np.uint8), active, 10, nprobe=ix.nlist)
    assert c == 3 and sorted(idx[:3].tolist()) == [3, 700, 1999] and (idx[3:] == -1).all()


def test_ties_go_to_the_lower_row():
    n = 1000
    Q, b = random_factors(n)
    # one vector repeated at scattered rows: equal scores for every query
    dup = np.array([901, 17, 450, 5, 777, 300])
    Q[dup] = Q[dup[0]]
    b[dup] = b[dup[0]] + 10.0  # the best items of every query
    ix = IVFIndex(DIM, seed=2).build(Q, b, n)
    z, one = np.zeros(n, np.uint8), np.ones(n, np.uint8)
    for p in queries(5):
        idx, sc, c = ix.search(p, Q, b, n, z, one, 4)
        assert idx[:4].tolist() == [5, 17, 300, 450]  # the tie cut at k keeps the lower rows
        assert (sc[:4] == sc[0]).all()
        assert_same_as_exact(ix, Q, b, n, z, one, 8, [p], nprobe=ix.nlist, cand=n)


def test_recall_on_clustered_factors_with_few_lists_probed():
    n = 20000
    Q, b = clustered_factors(n, dim=16, clusters=40)
    ix = IVFIndex(16, seed=0).build(Q, b, n)
    excl, active = masks(n, frac=0.01)
    P = queries(50, dim=16)
    r = recall(ix, Q, b, n, excl, active, 10, P, nprobe=8)
    assert r >= 0.95, r
    # probing fewer lists scans less and finds less; all lists finds everything
    assert recall(ix, Q, b, n, excl, active, 10, P, nprobe=1) <= r
    assert recall(ix, Q, b, n, excl, active, 10, P, nprobe=ix.nlist, cand=n) == 1.0


def test_tune_finds_the_fewest_lists_for_the_target():
    n = 20000
    Q, b = clustered_factors(n, dim=16, clusters=40)
    ix = IVFIndex(16, seed=0).build(Q, b, n)
    P = queries(30, dim=16)
    nprobe = ix.tune(P, Q, b, n, target=0.95)
    assert ix.nprobe == nprobe and 1 <= nprobe < ix.nlist
    z, one = np.zeros(n, np.uint8), np.ones(n, np.uint8)
    assert recall(ix, Q, b, n, z, one, 10, P) >= 0.95
    if nprobe > 1:
        assert recall(ix, Q, b, n, z, one, 10, P, nprobe=nprobe - 1) < 0.95
    assert ix.tune(P, Q, b, n, target=1.01) == ix.nlist  # out of reach: every list


def test_scores_are_exact_even_when_the_copies_are_stale():
    n = 3000
    Q, b = clustered_factors(n)
    ix = IVFIndex(DIM, seed=0).build(Q, b, n)
    rng = np.random.default_rng(5)
    changed = rng.choice(n, 300, replace=False)
    Q[changed] += rng.normal(0.0, 0.05, (300, DIM)).astype(np.float32)
    b[changed] += 0.05
    z, one = np.zeros(n, np.uint8), np.ones(n, np.uint8)
    for p in queries(10):
        idx, sc, c = ix.search(p, Q, b, n, z, one, 10)
        np.testing.assert_allclose(sc[:c], exact_numpy(p, Q, b, idx[:c]), rtol=1e-5, atol=1e-6)
        assert (np.diff(sc[:c]) <= 0).all()
    # with every candidate re-scored the ranking is the exact one, stale copies or not
    assert_same_as_exact(ix, Q, b, n, z, one, 10, queries(10), nprobe=ix.nlist, cand=n)


@pytest.mark.parametrize("check_every", [1, 32])
def test_updates_move_rows_and_keep_each_in_one_list(check_every):
    n = 4000
    Q, b = clustered_factors(n, clusters=8)
    ix = IVFIndex(DIM, check_every=check_every, seed=0).build(Q, b, n)
    before = ix.row_list[:n].copy()
    rng = np.random.default_rng(7)
    # rows jump to other rows' places: far moves, in batches of 33 (an event's rows)
    for _ in range(60):
        rows = rng.choice(n, 33, replace=True)  # duplicates within a batch are fine
        src = rng.choice(n, 33)
        Q[rows] = Q[src] + rng.normal(0.0, 0.01, (33, DIM)).astype(np.float32)
        b[rows] = b[src]
        ix.update(Q, b, rows)
    ix.check()
    assert len(ix) == n
    moved = np.flatnonzero(ix.row_list[:n] != before)
    assert ix.stats[1] > 0 and len(moved) > 0 and ix.stats[2] == 0
    assert ix.stats[4] == (60 * 33 if check_every == 1 else len(range(0, 60 * 33, 32)))
    # the copies follow the rows: probing everything is exact again
    excl, active = masks(n)
    assert_same_as_exact(ix, Q, b, n, excl, active, 10, queries(10), nprobe=ix.nlist, cand=n)
    P = queries(40)
    fresh = IVFIndex(DIM, seed=0).build(Q, b, n)
    r_up = recall(ix, Q, b, n, excl, active, 10, P, nprobe=4)
    r_fresh = recall(fresh, Q, b, n, excl, active, 10, P, nprobe=4)
    if check_every == 1:
        # every row checked: each sits in its nearest list, as in a fresh build
        assert r_up >= r_fresh - 0.05, (r_up, r_fresh)
        assert ix.needs_rebuild() is None or "misplaced" in ix.needs_rebuild()
    else:
        # a sample checked: most jumped rows still sit in their old lists, and the sample
        # says so (rows jumped to random places: most checked ones had to move)
        assert ix.misplaced() > 0.2 and "misplaced" in ix.needs_rebuild()
        ix.update(Q, b, np.arange(n), check=True)  # what a caller does for rows it knows jumped
        ix.check()
        assert recall(ix, Q, b, n, excl, active, 10, P, nprobe=4) >= r_fresh - 0.05


def test_small_drift_is_an_in_place_copy():
    n = 2000
    Q, b = clustered_factors(n)
    ix = IVFIndex(DIM, seed=0).build(Q, b, n)
    slots = ix.row_slot[:n].copy()
    rows = np.arange(0, n, 7)
    Q[rows] *= np.float32(1.0001)
    ix.update(Q, b, rows)
    assert ix.stats[4] == len(range(0, len(rows), 32))  # every 32nd row checked
    assert ix.stats[1] == 0 and (ix.row_slot[:n] == slots).all()
    s = ix.row_slot[rows]
    scale = ix.slot_scale[s][:, None]
    np.testing.assert_allclose(ix.slot_q[s] * scale, Q[rows], atol=float(scale.max()) / 2 + 1e-7)


def test_adding_rows_grows_lists_and_the_arena():
    n0, n = 500, 6000
    Q, b = clustered_factors(n, clusters=6)
    ix = IVFIndex(DIM, nlist=20, seed=0).build(Q, b, n0)
    slots0 = len(ix.slot_row)
    rng = np.random.default_rng(3)
    new = np.arange(n0, n)
    for chunk in np.array_split(new, 40):
        ix.add(Q, b, chunk)
        # rows already indexed updated in the same calls
        ix.update(Q, b, rng.choice(chunk[0], 10))
    ix.check()
    assert len(ix) == n and ix.stats[2] == n - n0
    assert len(ix.slot_row) > slots0  # the arena grew (repacked)
    assert ix.needs_rebuild() is not None and "grew" in ix.needs_rebuild()
    excl, active = masks(n)
    assert_same_as_exact(ix, Q, b, n, excl, active, 10, queries(10), nprobe=ix.nlist, cand=n)
    ix.build(Q, b, n)
    ix.check()
    assert ix.needs_rebuild() is None and ix.nlist == 20


def test_remove():
    n = 1500
    Q, b = random_factors(n)
    ix = IVFIndex(DIM, seed=0).build(Q, b, n)
    gone = np.arange(0, n, 3)
    assert ix.remove(gone) == len(gone)
    assert ix.remove(gone) == 0
    ix.check()
    assert len(ix) == n - len(gone)
    z, one = np.zeros(n, np.uint8), np.ones(n, np.uint8)
    for p in queries(5):
        idx, _, c = ix.search(p, Q, b, n, z, one, 10, nprobe=ix.nlist, cand=n)
        assert not set(idx[:c].tolist()) & set(gone.tolist())
    ix.update(Q, b, gone[:10])  # back in
    ix.check()
    assert len(ix) == n - len(gone) + 10


def test_tiny_and_empty_catalogs():
    Q, b = random_factors(5)
    ix = IVFIndex(DIM).build(Q, b, 5)
    z, one = np.zeros(5, np.uint8), np.ones(5, np.uint8)
    assert_same_as_exact(ix, Q, b, 5, z, one, 10, queries(3))
    empty = IVFIndex(DIM).build(Q, b, 0)
    idx, sc, c = empty.search(queries(1)[0], Q, b, 0, z, one, 3)
    assert c == 0 and (idx == -1).all()
    empty.add(Q, b, np.arange(5))
    empty.check()
    assert len(empty) == 5
    with pytest.raises(ValueError):
        IVFIndex(DIM, metric="cosine")
    with pytest.raises(ValueError):
        IVFIndex(DIM + 1).build(Q, b, 5)


def test_the_build_assigns_each_row_to_its_nearest_centroid_as_the_kernel_does():
    """``ann.nearest_centroids`` (matrix products, in chunks) against the kernel's
    ``nearest_centroid``, row by row, across a chunk boundary."""
    from recsys_stream.ann import CHUNK_ROWS, nearest_centroids
    from recsys_stream.kernels.ivf import centroid_norms, nearest_centroid

    rng = np.random.default_rng(3)
    X = rng.normal(size=(CHUNK_ROWS + 517, DIM + 2)).astype(np.float32)
    cent = rng.normal(size=(37, DIM + 2)).astype(np.float32)
    cn = np.empty(len(cent), dtype=np.float32)
    centroid_norms(cent, cn)
    centT = np.ascontiguousarray(cent.T)
    got = np.empty(len(X), dtype=np.int64)
    nearest_centroids(X, centT, cn, got)
    acc = np.empty(len(cent), dtype=np.float32)
    want = np.array([nearest_centroid(x, centT, cn, acc) for x in X])
    assert np.array_equal(got, want)


def test_kmeans_ends_with_each_centroid_the_mean_of_its_rows():
    """Lloyd's iterations run to a fixed point: every row is in its nearest centroid's
    cluster and every non-empty centroid is its cluster's mean; the objective never rises."""
    from recsys_stream.ann import kmeans, nearest_centroids
    from recsys_stream.kernels.ivf import centroid_norms

    Q, b = clustered_factors(3000)
    X = np.hstack([Q, b[:, None].astype(np.float32)])
    rng = np.random.default_rng(0)
    cent = X[rng.choice(len(X), 20, replace=False)].copy()

    def cost(c):
        return float((((X[:, None, :] - c[None, :, :]) ** 2).sum(axis=2)).min(axis=1).sum())

    before = cost(cent)
    assign = kmeans(X, cent, 100, 7)
    assert cost(cent) <= before
    cn = np.empty(len(cent), dtype=np.float32)
    centroid_norms(cent, cn)
    again = np.empty(len(X), dtype=np.int64)
    nearest_centroids(X, np.ascontiguousarray(cent.T), cn, again)
    assert np.array_equal(again, assign)
    for c in np.unique(assign):
        np.testing.assert_allclose(cent[c], X[assign == c].mean(axis=0), rtol=1e-4, atol=1e-5)
