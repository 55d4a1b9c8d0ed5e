"""Peer learners for ``compare --peers``: River's online models on the same stream, the
same prequential protocol (predict with the model as it stands, then learn), the same
metrics and curves as the project's models.

- ``river-biasedmf``: ``river.reco.BiasedMF`` on the rating events (the ones ``mf``
  learns from: ratings inside its range), against ``mf``'s RMSE and MAE;
- ``river-ftrl``: ``river.linear_model.LogisticRegression`` with ``FTRLProximal`` over
  one-hot user and item, the like label of every event (``ftrl``'s: a rating of at least
  ``like_threshold``, or a positive event type), against ``ftrl``'s logloss and AUC.

Popularity, the third peer the comparison names, is the project's own ``pop`` model
(``--peers`` adds it to the models). River is an optional extra (``pip install
'recsys-stream[peers]'``): without it ``--peers`` ends with one line saying so.
Hyper-parameters are River's documented defaults (BiasedMF: its docstring example), as in
``benchmarks/peers.py`` without ``--tuned``.
"""

from __future__ import annotations

import sys
import time
from types import SimpleNamespace

import numpy as np

from .events import RATING
from .metrics import MetricsAccumulator
from .models.ftrl import like_labels

PEERS = ("river-biasedmf", "river-ftrl")


class PeerUnavailable(RuntimeError):
    """River is not installed."""


def river_version() -> str:
    try:
        import river
    except ImportError:
        raise PeerUnavailable("--peers: River is not installed; pip install 'recsys-stream[peers]' (or river>=0.21)") \
            from None
    return river.__version__


def _biasedmf(seed: int):
    from river import optim, reco

    return reco.BiasedMF(n_factors=10, bias_optimizer=optim.SGD(0.025), latent_optimizer=optim.SGD(0.025),
                         l2_bias=0.0, l2_latent=0.0, seed=seed,
                         latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=seed))


def _ftrl():
    from river import linear_model, optim

    return linear_model.LogisticRegression(optimizer=optim.FTRLProximal(alpha=0.05, beta=1.0, l1=0.0, l2=1.0),
                                           intercept_lr=0.01)


def run_peer(name: str, events, seed: int, k: int, like_threshold: float = 4.0, rating_range=(1.0, 5.0),
             quiet: bool = True) -> tuple[dict, MetricsAccumulator]:
    """Replay ``events`` (an ``EventBatch`` in replay order) through peer ``name``: (its
    summary, its metrics accumulator for the curves)."""
    version = river_version()
    users, items = events.user.tolist(), events.item.tolist()
    if name == "river-biasedmf":
        lo, hi = rating_range
        sel = np.flatnonzero((events.etype == RATING) & (events.value >= lo) & (events.value <= hi))
        model = _biasedmf(seed)
        target = events.value[sel].astype(np.float32)
        pred = np.empty(len(sel), np.float32)
        predict, learn = model.predict_one, model.learn_one
        t0 = time.perf_counter()
        for t, e in enumerate(sel.tolist()):
            u, i, r = users[e], items[e], float(target[t])
            pred[t] = predict(u, i)
            learn(u, i, r)
            if not quiet and t % 20_000 == 0 and t:
                print(f"compare: {name}: {t:,} events", file=sys.stderr, flush=True)
        acc = MetricsAccumulator(k=k, rating=True, like=False)
        params = {"n_factors": 10, "bias_lr": 0.025, "latent_lr": 0.025, "init_sigma": 0.1, "seed": seed}
    elif name == "river-ftrl":
        sel = np.arange(len(events))
        target = like_labels(events.etype, events.value, like_threshold).astype(np.float32)
        model = _ftrl()
        pred = np.empty(len(sel), np.float32)
        predict, learn = model.predict_proba_one, model.learn_one
        t0 = time.perf_counter()
        for e in range(len(sel)):
            x = {"u=" + users[e]: 1.0, "i=" + items[e]: 1.0}
            pred[e] = predict(x)[True]
            learn(x, bool(target[e]))
            if not quiet and e % 20_000 == 0 and e:
                print(f"compare: {name}: {e:,} events", file=sys.stderr, flush=True)
        acc = MetricsAccumulator(k=k, rating=False, like=True)
        params = {"alpha": 0.05, "beta": 1.0, "l1": 0.0, "l2": 1.0, "intercept_lr": 0.01,
                  "features": "one-hot user and item"}
    else:
        raise ValueError(f"unknown peer {name!r}; expected one of {', '.join(PEERS)}")
    seconds = time.perf_counter() - t0
    n = len(sel)
    acc.add(SimpleNamespace(n=n, seq=events.seq[sel], pred=pred, target=target, pos=np.full(n, -2, np.int16),
                            new_items=[], new_recs=[], shard=0, users=len(set(events.user[sel].tolist())),
                            duplicates=0, filtered=0, lists=None, busy_s=seconds, staleness=None))
    summary = {"model": name, "peer": f"river {version}", "events": int(n), "params": params}
    summary.update(acc.finish())
    summary.pop("items", None)
    summary["events_per_s"] = round(n / seconds, 1) if seconds > 0 else None
    return summary, acc
