"""Shared fixtures: small deterministic streams built in the tests themselves."""

from __future__ import annotations

import numpy as np
import pytest

from recsys_stream.events import EventBatch


def make_batch(users, items, ts=None, values=None, etypes=None) -> EventBatch:
    n = len(users)
    ts = np.arange(n, dtype=np.float64) * 60.0 if ts is None else ts
    values = np.ones(n) if values is None else values
    etypes = np.zeros(n) if etypes is None else etypes
    return EventBatch.from_columns([str(u) for u in users], [str(i) for i in items], ts, etypes, values,
                                   np.arange(n), np.full(n, -1), np.arange(n))


def random_stream(n=400, n_users=15, n_items=25, seed=0):
    """Random (user, item, rating, ts) with rows numbered in order of first appearance."""
    rng = np.random.default_rng(seed)
    raw_u = rng.integers(0, n_users, n)
    raw_i = np.minimum(rng.zipf(1.3, n) - 1, n_items - 1)
    ratings = rng.integers(1, 6, n).astype(np.float64)
    ts = np.cumsum(rng.exponential(300.0, n)) + 1.0e9
    umap, imap, ev = {}, {}, []
    for u, i, r, t in zip(raw_u, raw_i, ratings, ts):
        uu = umap.setdefault(int(u), len(umap))
        ii = imap.setdefault(int(i), len(imap))
        ev.append((uu, ii, float(r), float(t)))
    batch = make_batch([f"u{e[0]}" for e in ev], [f"i{e[1]}" for e in ev], np.array([e[3] for e in ev]),
                       np.array([e[2] for e in ev]))
    return ev, batch


@pytest.fixture
def stream():
    return random_stream()


@pytest.fixture(scope="session")
def kafka():
    """The bootstrap address of the local broker (scripts/kafka-dev.sh), one per session."""
    import kafkautil

    boot, started = kafkautil.start_broker()
    yield boot
    if started:
        kafkautil.stop_broker()
