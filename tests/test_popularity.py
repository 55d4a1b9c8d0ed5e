"""The popularity order sorted in its head only (``kernels.popularity``: ``HEAD`` places),
checked on catalogs larger than the head: after any sequence of updates the head holds the
most popular items in order, and every ranking that walks the order (the popularity list,
item-to-item's merge with it) equals an exact sort of the whole catalog."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recsys_stream.generate import GeneratorSettings, generate
from recsys_stream.kernels.popularity import HEAD, pop_learn, pop_topk
from recsys_stream.models import model_params
from recsys_stream.shard import Shard, ShardSettings


def exact_order(lp: np.ndarray) -> np.ndarray:
    """Rows by value descending, then row ascending."""
    return np.lexsort((np.arange(len(lp)), -lp))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_head_holds_the_most_popular_in_order_after_any_updates(seed):
    rng = np.random.default_rng(seed)
    n = HEAD + 3000
    lp = np.full(n, -np.inf)
    plin = np.zeros(n)
    meta = np.array([math.log(2) / 86400.0, -np.inf])
    order = np.arange(n, dtype=np.int32)
    rank = np.arange(n, dtype=np.int32)
    t = 0.0
    # a long tail hit once each, then a popular few, then the tail again: items enter and
    # leave the head
    for i in np.concatenate([rng.permutation(n), rng.integers(0, 50, 3000), rng.integers(0, n, 20000)]):
        t += float(rng.exponential(30.0))
        pop_learn(lp, plin, meta, n, int(i), t, order, rank)
    want = exact_order(lp)
    assert np.array_equal(order[:HEAD], want[:HEAD])
    assert set(order[HEAD:].tolist()) == set(want[HEAD:].tolist())
    assert np.array_equal(rank[order], np.arange(n))
    # the popularity list past the head: a mask that excludes nearly all of it
    excl = np.zeros(n, np.uint8)
    excl[want[: HEAD - 3]] = 1
    active = np.ones(n, np.uint8)
    active[want[HEAD + 1]] = 0
    k = 10
    idx = np.zeros(k, np.int32)
    sc = np.zeros(k)
    c = pop_topk(lp, plin, order, n, excl, active, k, idx, sc)
    usable = [j for j in want if not excl[j] and active[j]]
    assert c == k and idx.tolist() == usable[:k]
    assert np.allclose(sc, plin[idx] / plin[order[0]])


def test_itemknn_lists_rank_as_an_exact_sort_of_a_catalog_larger_than_the_head():
    """Bounded neighbour lists over a catalog larger than the head: the ranking (candidates'
    scores merged with the popularity order) equals scoring every item and sorting."""
    ev = generate(GeneratorSettings(shape="zipf", events=20_000, users=300, items=6 * HEAD, groups=5, zipf=0.8, seed=4))
    p = model_params("itemknn", dense_items=0)
    sh = Shard(0, ShardSettings(model="itemknn", params=p, seed=1, k=10, lists="none"))
    sh.process(ev)
    n = len(sh.items)
    assert n > HEAD
    ia, ua = sh.items.arrays, sh.users.arrays
    pool = sh.items.pools["knn"]
    plin = ia["plin"][:n]
    top = int(np.argmax(plin))
    pop_rel = plin / plin[top]
    checked = 0
    for user in np.unique(ev.user)[:60]:
        u = sh.users.ids.get(user)
        acc = np.zeros(n)
        n_ev = int(ua["uev"][u])
        ring = ua["recent"][u]
        w = 1.0
        for back in range(min(p.recent, n_ev, len(ring))):
            r = int(ring[(n_ev - 1 - back) % len(ring)])
            if ia["knn.n"][r] > 0:
                js, cs = pool.row(ia, r)
                np.add.at(acc, js, w / ia["knn.n"][r] ** p.beta * cs.astype(np.float64))
            w *= p.alpha
        score = acc * ia["knn.inv"][:n] + p.pop_weight * pop_rel
        had = {sh.items.ids.get(i) for i in ev.item[ev.user == user]}
        ranked = [j for j in np.lexsort((np.arange(n), -score)) if j not in had][:10]
        got = sh.recommend(user)
        assert got["items"] == [sh.items.ids.ids[j] for j in ranked], user
        assert np.allclose(got["scores"], score[ranked], rtol=1e-5)
        checked += 1
    assert checked == 60
