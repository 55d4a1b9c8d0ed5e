"""Approximate retrieval for the factor models (issue #9): the Numba IVF index
(``recsys_stream.ann.IVFIndex``) against hnswlib, usearch and the exact scan
(``score_factors`` + ``topk_masked``), on learned and on random item factors.

Datasets (``--datasets``):

- ``learned-100k``, ``learned-1m``, ``learned-1m-flat``: the implicit model (defaults:
  dim 32, 32 negatives) trained by a ``Shard`` (no evaluation: learning only) on a
  generated large-catalog stream (``GeneratorSettings(shape="zipf", ...)``, ``DATASETS``
  gives items, events, users and the Zipf exponent); the factors are ``imp.Q``/``imp.b``
  of the catalog's rows (the items the stream has seen: ~85k of 100k, ~314k of 1M) and
  ``imp.P`` of the users. ``learned-1m`` is the stream of ``catalog_scale.py`` at 10^6
  items (Zipf 1.1, 2M events); ``learned-1m-flat`` has a flatter law (0.6) over 1.2M items
  so that ~963k rows are seen in 3M events, each with few positives: factors with little
  structure, close to the random case. Trained factors are cached in ``--cache``.
- ``random-1m``: Gaussian factors, 10^6 items, with the learned ones' spreads (per
  component: Q 0.2, P 0.58 (their RMS: a median |p| of 3.3), b 0.53): no structure at
  all, the worst case for any index.

Queries: ``--queries`` users drawn by activity (the users of random events of the
stream's last fifth; random users for ``random-1m``), one at a time, k = 10, the user's
items excluded (their whole history: the project's exclusion mask). Recall@10 is
against the exact ranking of the same vectors (``score_factors`` + ``topk_masked``).

Latency: "kernel" is timed inside compiled code around the search alone (the cost a
model's kernel would pay; IVF and exact only); "call" is from Python per query,
including the call's overhead (all indexes; the libraries can only be called so).
Libraries get the exclusion by over-fetching (``cand`` + the user's item count) and
their candidates are re-scored exactly with the current vectors, as the IVF's are.

Updates: ``--update-batches`` batches of 33 rows (one Zipf-popular row and 32 uniform
ones: an event's positive and negatives), each row moved by an SGD-like step
(``N(0, 0.01)`` per component, ``N(0, 0.02)`` on the bias); per index the time per row
(IVF ``update``; hnswlib ``add_items`` over existing labels, its in-place update;
usearch ``remove`` + ``add``) and, for the IVF, how many rows were checked against
every centroid and how many moved list; the IVF's batches are timed from Python
(``IVFIndex.update``) and inside compiled code (``ivf_update``, what a model's kernel
would pay).

HR@10 (``--hr``): the implicit model on a 100k-item stream (1M events, 20k users, Zipf
1.1): after a warm-up of 80% of the events, every event of the rest is ranked (the
user's top-10, the user's items excluded, from the state at the start of its batch of
``--hr-batch`` events) exactly and by indexes built at the warm-up's end (``nprobe``
tuned for recall 0.95 on 200 users) and refreshed every 1000 or 10000 events with the
rows changed since (``items.arrays["dirty"]``; every 32nd row checked, every row, or none),
or never; then the batch is learned. A refreshed index is rebuilt (and re-tuned) when
``needs_rebuild`` says so.

IVF rows: ``nprobe (tuned)`` is ``IVFIndex.tune`` on 200 other users for ``--target``;
the rest sweep ``nprobe`` and variants (metric, copies, nlist).

Writes ``ann_recall.json`` to ``--out`` (merged per dataset with what is there) and
prints a Markdown table. Every stage stays under ~10 minutes on the 2-core machine.

    python benchmarks/ann_recall.py --out benchmarks/results
    python benchmarks/ann_recall.py --datasets learned-100k --indexes ivf,exact --no-hr
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
from numba import njit

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from backtest_vs_peers import machine, versions  # noqa: E402
from recsys_stream.ann import IVFIndex  # noqa: E402
from recsys_stream.kernels.ivf import ivf_search, ivf_update  # noqa: E402
from recsys_stream.kernels.topk import score_factors, topk_candidates, topk_masked  # noqa: E402

K = 10
DATASETS = {
    "learned-100k": {"items": 100_000, "events": 1_000_000, "users": 20_000, "zipf": 1.1},
    "learned-1m": {"items": 1_000_000, "events": 2_000_000, "users": 100_000, "zipf": 1.1},
    "learned-1m-flat": {"items": 1_200_000, "events": 3_000_000, "users": 100_000, "zipf": 0.6},
    "random-1m": {"items": 1_000_000},
}
TUNE_QUERIES = 200  # users (not among the measured ones) that ``IVFIndex.tune`` measures on
RANDOM_STD = {"Q": 0.2, "b": 0.53, "P": 0.58}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# -- timing inside compiled code ---------------------------------------------------

_libc = ctypes.CDLL(None)
_clock = _libc.clock_gettime
_clock.argtypes = [ctypes.c_int, ctypes.c_void_p]
_clock.restype = ctypes.c_int


@njit
def _now_ns(buf):
    _clock(1, buf.ctypes.data)  # CLOCK_MONOTONIC
    return buf[0] * 1000000000 + buf[1]


@njit
def _mark(hoff, hcat, t, excl, v):
    for h in range(hoff[t], hoff[t + 1]):
        excl[hcat[h]] = v


@njit
def run_exact(P, Q, b, n, excl, active, hoff, hcat, k, lat, res):
    buf = np.zeros(2, np.int64)
    oi = np.empty(k, np.int64)
    osc = np.empty(k)
    scores = np.empty(n)
    for t in range(P.shape[0]):
        _mark(hoff, hcat, t, excl, 1)
        t0 = _now_ns(buf)
        score_factors(P[t], Q, b, n, scores)
        topk_masked(scores, n, excl, active, k, oi, osc)
        lat[t] = _now_ns(buf) - t0
        res[t, :] = oi
        _mark(hoff, hcat, t, excl, 0)


@njit
def run_ivf(P, Q, b, n, excl, active, hoff, hcat, M, centT, cn, lstart, llen, slot_row, slot_q, slot_scale, slot_bias,
            nprobe, cand, k, lat, res):
    buf = np.zeros(2, np.int64)
    oi = np.empty(k, np.int64)
    osc = np.empty(k)
    for t in range(P.shape[0]):
        _mark(hoff, hcat, t, excl, 1)
        t0 = _now_ns(buf)
        ivf_search(P[t], Q, b, n, excl, active, M, centT, cn, lstart, llen, slot_row, slot_q, slot_scale, slot_bias,
                   nprobe, cand, k, oi, osc)
        lat[t] = _now_ns(buf) - t0
        res[t, :] = oi
        _mark(hoff, hcat, t, excl, 0)


@njit
def run_updates(batches, dQ, db, Q, b, M, centT, cn, lstart, llen, lcap, used, slot_row, slot_q, slot_scale, slot_bias,
                row_list, row_slot, quant, check_every, stats, lat):
    """Per batch of rows: move them (``Q[rows] += dQ``, ``b[rows] += db``), then
    ``ivf_update`` (timed). Returns how many batches were done (fewer when the arena ran
    out of room: the caller finishes through ``IVFIndex.update``)."""
    buf = np.zeros(2, np.int64)
    for t in range(batches.shape[0]):
        rows = batches[t]
        for r in range(rows.shape[0]):
            j = rows[r]
            for f in range(Q.shape[1]):
                Q[j, f] += dQ[t, r, f]
            b[j] += db[t, r]
        t0 = _now_ns(buf)
        done = ivf_update(rows, 0, Q, b, M, centT, cn, lstart, llen, lcap, used, slot_row, slot_q, slot_scale,
                          slot_bias, row_list, row_slot, quant, check_every, stats)
        lat[t] = _now_ns(buf) - t0
        if done < rows.shape[0]:
            return t
    return batches.shape[0]


@njit
def rescore_filter(p, Q, b, labels, excl, k, out_idx, out_sc):
    """A library's candidates: drop the excluded, re-score exactly, top-k."""
    m = labels.shape[0]
    cand = np.empty(m, np.int64)
    vals = np.empty(m)
    c = 0
    for t in range(m):
        j = labels[t]
        if j < 0 or excl[j] != 0:
            continue
        s = np.float32(0.0)
        for f in range(Q.shape[1]):
            s += p[f] * Q[j, f]
        cand[c] = j
        vals[c] = s + b[j]
        c += 1
    return topk_candidates(cand, vals, c, k, out_idx, out_sc)


def recall(res: np.ndarray, truth: np.ndarray) -> float:
    hits = 0
    for a, t in zip(res.tolist(), truth.tolist()):
        hits += len(set(a) & set(x for x in t if x >= 0))
    return hits / max(1, int((truth >= 0).sum()))


def pct(lat_ns: np.ndarray) -> dict:
    us = np.asarray(lat_ns, dtype=np.float64) / 1e3
    return {"p50_us": round(float(np.percentile(us, 50)), 1), "p99_us": round(float(np.percentile(us, 99)), 1)}


# -- datasets -----------------------------------------------------------------------


def train_learned(spec: dict, n_queries: int, seed: int) -> dict:
    from recsys_stream.generate import GeneratorSettings, generate
    from recsys_stream.shard import Shard, ShardSettings

    t0 = time.perf_counter()
    g = GeneratorSettings(shape="zipf", items=spec["items"], events=spec["events"], users=spec["users"],
                          zipf=spec["zipf"], seed=7)
    stream = generate(g)
    gen_s = time.perf_counter() - t0
    sh = Shard(0, ShardSettings(model="implicit", evaluate=False))
    t0 = time.perf_counter()
    B = 20_000
    for s in range(0, len(stream), B):
        sh.process(stream.slice(s, min(s + B, len(stream))))
        if (s // B) % 25 == 0:
            log(f"ann_recall: trained {s + B:,} of {len(stream):,} events")
    train_s = time.perf_counter() - t0
    n = len(sh.items)
    ia, ua = sh.items.arrays, sh.users.arrays
    rng = np.random.default_rng(seed)
    tail = np.arange(int(0.8 * len(stream)), len(stream))
    users = sh.users.rows(stream.user[rng.choice(tail, n_queries + TUNE_QUERIES)])
    tune_users, users = users[n_queries:], users[:n_queries]
    hist = [sh.users.items_of(int(u)) for u in users]
    return {"Q": np.ascontiguousarray(ia["imp.Q"][:n]), "b": np.ascontiguousarray(ia["imp.b"][:n]),
            "P": np.ascontiguousarray(ua["imp.P"][users]), "Pt": np.ascontiguousarray(ua["imp.P"][tune_users]),
            "hoff": np.cumsum([0] + [len(h) for h in hist]).astype(np.int64),
            "hcat": np.concatenate(hist).astype(np.int64),
            "pop": np.bincount(sh.items.rows(stream.item)[0], minlength=n).astype(np.int64),
            "meta": np.array(json.dumps({"generator": {k: spec[k] for k in ("items", "events", "users", "zipf")},
                                         "rows": n, "users": len(sh.users), "gen_s": round(gen_s, 1),
                                         "train_s": round(train_s, 1),
                                         "train_events_per_s": round(len(stream) / train_s)}))}


def random_data(n: int, n_queries: int, dim: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    Q = rng.normal(0.0, RANDOM_STD["Q"], (n, dim)).astype(np.float32)
    b = rng.normal(0.0, RANDOM_STD["b"], n)
    P = rng.normal(0.0, RANDOM_STD["P"], (n_queries + TUNE_QUERIES, dim)).astype(np.float32)
    P, Pt = P[:n_queries], P[n_queries:]
    lens = 1 + rng.geometric(1 / 30, n_queries)
    hist = [rng.choice(n, min(int(h), n), replace=False) for h in lens]
    return {"Q": Q, "b": b, "P": P, "Pt": Pt, "hoff": np.cumsum([0] + [len(h) for h in hist]).astype(np.int64),
            "hcat": np.concatenate(hist).astype(np.int64), "pop": np.ones(n, np.int64),
            "meta": np.array(json.dumps({"random": RANDOM_STD, "rows": n}))}


def dataset(name: str, n_queries: int, cache: Path, seed: int) -> dict:
    spec = DATASETS[name]
    key = hashlib.sha256(json.dumps([name, spec, n_queries, TUNE_QUERIES, seed, 3]).encode()).hexdigest()[:12]
    path = cache / f"{name}-{key}.npz"
    if path.exists():
        log(f"ann_recall: {name}: factors from {path}")
        d = dict(np.load(path))
    else:
        d = train_learned(spec, n_queries, seed) if name.startswith("learned") else random_data(
            spec["items"], n_queries, 32, seed)
        if name.startswith("learned"):
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(path, **d)
    d["meta"] = json.loads(str(d["meta"]))
    return d


# -- indexes ------------------------------------------------------------------------


def drift_batches(n: int, pop: np.ndarray, batches: int, seed: int):
    """``batches`` batches of 33 rows: a Zipf-popular one and 32 uniform ones."""
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(pop.astype(np.float64))
    cdf /= cdf[-1]
    for _ in range(batches):
        pos = int(np.searchsorted(cdf, rng.random()))
        rows = np.concatenate(([min(pos, n - 1)], rng.integers(0, n, 32))).astype(np.int64)
        yield rows, rng


def apply_drift(Q, b, rows, rng):
    Q[rows] += rng.normal(0.0, 0.01, (len(rows), Q.shape[1])).astype(np.float32)
    b[rows] += rng.normal(0.0, 0.02, len(rows))


def time_updates(d, a, update, budget_s: float | None = None) -> tuple[list, np.ndarray, np.ndarray]:
    """ns per row of ``update(Q, b, rows)`` over the drift batches (``drift_batches``), the
    vectors moved before each batch, at most ``budget_s`` seconds when given; and the moved
    copies of Q and b."""
    Qd, bd = d["Q"].copy(), d["b"].copy()
    per = []
    deadline = None if budget_s is None else time.perf_counter() + budget_s
    for rows, rng in drift_batches(len(d["Q"]), d["pop"], a.update_batches, a.seed):
        apply_drift(Qd, bd, rows, rng)
        t0 = time.perf_counter_ns()
        update(Qd, bd, rows)
        per.append((time.perf_counter_ns() - t0) / len(rows))
        if deadline is not None and time.perf_counter() > deadline:
            break
    return per, Qd, bd


def bench_exact(d, excl, active) -> dict:
    Q, b, P = d["Q"], d["b"], d["P"]
    n = len(Q)
    lat = np.zeros(len(P), np.int64)
    truth = np.zeros((len(P), K), np.int64)
    run_exact(P[:2], Q, b, n, excl, active, d["hoff"], d["hcat"], K, lat[:2], truth[:2])  # compile
    run_exact(P, Q, b, n, excl, active, d["hoff"], d["hcat"], K, lat, truth)
    scores = np.empty(n)
    oi, osc = np.empty(K, np.int64), np.empty(K)
    call = []
    for t in range(min(len(P), 200)):
        _mark(d["hoff"], d["hcat"], t, excl, 1)
        t0 = time.perf_counter_ns()
        score_factors(P[t], Q, b, n, scores)
        topk_masked(scores, n, excl, active, K, oi, osc)
        call.append(time.perf_counter_ns() - t0)
        _mark(d["hoff"], d["hcat"], t, excl, 0)
    return {"truth": truth, "row": {"index": "exact", "params": "score_factors + topk_masked", "recall@10": 1.0,
                                    "kernel": pct(lat), "call": pct(call), "build_s": 0.0,
                                    "bytes_per_item": 0.0, "update_us_per_row": 0.0}}


def bench_ivf(d, excl, active, truth, a, variants) -> list[dict]:
    Q, b, P = d["Q"], d["b"].copy(), d["P"]
    n = len(Q)
    rows_out = []
    for label, kw, sweep in variants:
        gc.collect()
        t0 = time.perf_counter()
        ix = IVFIndex(Q.shape[1], seed=a.seed, **kw).build(Q, b, n)
        build_s = time.perf_counter() - t0
        tuned = None
        if any(x[0] == "tuned" for x in sweep):
            t0 = time.perf_counter()
            tuned = ix.tune(d["Pt"], Q, b, n, K, a.target)
            log(f"ann_recall: ivf {label}: tuned nprobe {tuned} for recall {a.target} "
                f"in {time.perf_counter() - t0:.1f} s")
        base = {"index": "ivf", "variant": label, "nlist": ix.nlist, "build_s": round(build_s, 2),
                "bytes_per_item": round(ix.memory_bytes() / n, 1), "imbalance": round(ix.imbalance(), 2)}
        log(f"ann_recall: ivf {label}: nlist {ix.nlist}, build {build_s:.1f} s")
        lat = np.zeros(len(P), np.int64)
        res = np.zeros((len(P), K), np.int64)
        for nprobe, cand in sweep:
            is_tuned = nprobe == "tuned"
            nprobe = tuned if is_tuned else nprobe
            cand = ix.cand_for(K) if cand is None else cand
            args = (ix.M, ix.centT, ix.cn, ix.lstart, ix.llen, ix.slot_row, ix.slot_q, ix.slot_scale, ix.slot_bias,
                    nprobe, cand, K)
            run_ivf(P[:2], Q, b, n, excl, active, d["hoff"], d["hcat"], *args, lat[:2], res[:2])
            run_ivf(P, Q, b, n, excl, active, d["hoff"], d["hcat"], *args, lat, res)
            call = []
            for t in range(min(len(P), 200)):
                _mark(d["hoff"], d["hcat"], t, excl, 1)
                t0 = time.perf_counter_ns()
                ix.search(P[t], Q, b, n, excl, active, K, nprobe=nprobe, cand=cand)
                call.append(time.perf_counter_ns() - t0)
                _mark(d["hoff"], d["hcat"], t, excl, 0)
            row = dict(base, params=f"nprobe {nprobe}{' (tuned)' if is_tuned else ''}, cand {cand}", nprobe=nprobe,
                       cand=cand, tuned=is_tuned,
                       **{"recall@10": round(recall(res, truth), 4)}, kernel=pct(lat), call=pct(call))
            rows_out.append(row)
            log(f"ann_recall:   nprobe {nprobe} cand {cand}: recall {row['recall@10']:.3f}, kernel {row['kernel']}")
        # updates: batches of 33 rows, the vectors moved by an SGD-like step; first from
        # Python (IVFIndex.update), then the same kind of batches timed inside compiled code
        per, Qd, bd = time_updates(d, a, ix.update)
        rng = np.random.default_rng(a.seed + 1)
        batches = np.stack([r for r, _ in drift_batches(n, d["pop"], a.update_batches, a.seed + 1)])
        dQ = rng.normal(0.0, 0.01, batches.shape + (Q.shape[1],)).astype(np.float32)
        db = rng.normal(0.0, 0.02, batches.shape)
        klat = np.zeros(len(batches), np.int64)
        ix._ensure_rows(n)
        done = run_updates(batches, dQ, db, Qd, bd, ix.M, ix.centT, ix.cn, ix.lstart, ix.llen, ix.lcap, ix.used,
                           ix.slot_row, ix.slot_q, ix.slot_scale, ix.slot_bias, ix.row_list, ix.row_slot, ix.quant,
                           ix.check_every, ix.stats, klat)
        kper = klat[:max(done, 1)] / batches.shape[1]
        st = ix.stats
        upd = {"update_us_per_row": round(float(np.median(per)) / 1e3, 2),
               "update_p99_us_per_row": round(float(np.percentile(per, 99)) / 1e3, 2),
               "update_kernel_us_per_row": round(float(np.median(kper)) / 1e3, 2),
               "update_kernel_p99_us_per_row": round(float(np.percentile(kper, 99)) / 1e3, 2),
               "update_moves_per_row": round(float(st[1] / max(1, st[0])), 4),
               "update_checked_per_row": round(float(st[4] / max(1, st[0])), 4)}
        for r in rows_out:
            if r.get("variant") == label:
                r.update(upd)
        log(f"ann_recall:   update {upd}")
        del ix, Qd, bd
    return rows_out


def lib_vectors(Q, b, rows, M):
    """A library's item vectors: ``[Q, b]`` (inner product), or with ``M`` the reduction
    to Euclidean nearest neighbours ``[Q, b, sqrt(M^2 - |q|^2 - b^2)]`` (the IVF's ``aug``)."""
    X = np.hstack([Q[rows], b[rows, None].astype(np.float32)])
    if M:
        a = np.sqrt(np.maximum(M * M - np.einsum("ij,ij->i", X, X, dtype=np.float64), 0.0)).astype(np.float32)
        X = np.hstack([X, a[:, None]])
    return np.ascontiguousarray(X)


def bench_hnswlib(d, excl, active, truth, a, aug: bool = False) -> list[dict]:
    import hnswlib

    Q, b, P = d["Q"], d["b"], d["P"]
    n, dim = Q.shape
    everything = np.arange(n)
    M = 0.0
    if aug:
        M = 1.1 * float(np.sqrt((np.einsum("ij,ij->i", Q, Q, dtype=np.float64) + b * b).max()))
    X = lib_vectors(Q, b, everything, M)
    gc.collect()
    r0 = rss_bytes()
    t0 = time.perf_counter()
    ix = hnswlib.Index(space="l2" if aug else "ip", dim=X.shape[1])
    ix.init_index(max_elements=n, M=a.hnsw_m, ef_construction=a.hnsw_efc, random_seed=a.seed)
    ix.set_num_threads(a.threads)
    ix.add_items(X, np.arange(n))
    build_s = time.perf_counter() - t0
    mem = (rss_bytes() - r0) / n
    del X
    name = "hnswlib-aug" if aug else "hnswlib"
    log(f"ann_recall: {name} M {a.hnsw_m} efc {a.hnsw_efc}: build {build_s:.1f} s")
    out = []
    ix.set_num_threads(1)
    for ef in a.ef:
        res = np.zeros((len(P), K), np.int64)
        call = []
        oi, osc = np.empty(K, np.int64), np.empty(K)
        for t in range(len(P)):
            h = int(d["hoff"][t + 1] - d["hoff"][t])
            fetch = min(n, a.lib_cand + h)
            ix.set_ef(max(ef, fetch))
            _mark(d["hoff"], d["hcat"], t, excl, 1)
            t0 = time.perf_counter_ns()
            y = np.append(P[t], np.float32(1.0))
            if aug:
                y = np.append(y, np.float32(0.0))
            labels, _ = ix.knn_query(y, k=fetch)
            rescore_filter(P[t], Q, b, labels[0].astype(np.int64), excl, K, oi, osc)
            call.append(time.perf_counter_ns() - t0)
            _mark(d["hoff"], d["hcat"], t, excl, 0)
            res[t] = oi
        row = {"index": name, "params": (f"{'l2 on [q, b, sqrt(M^2 - |x|^2)], ' if aug else 'ip, '}"
                                         f"M {a.hnsw_m}, efc {a.hnsw_efc}, ef {ef}, fetch {a.lib_cand}+history"),
               "recall@10": round(recall(res, truth), 4), "kernel": None, "call": pct(call),
               "build_s": round(build_s, 2), "bytes_per_item": round(mem, 1)}
        out.append(row)
        log(f"ann_recall:   ef {ef}: recall {row['recall@10']:.3f}, call {row['call']}")
    def add(Qd, bd, rows, ix=ix):
        ix.add_items(lib_vectors(Qd, bd, rows, M), rows, num_threads=1)

    per, _Qd, _bd = time_updates(d, a, add)
    for r in out:
        r["update_us_per_row"] = round(float(np.median(per)) / 1e3, 2)
        r["update_p99_us_per_row"] = round(float(np.percentile(per, 99)) / 1e3, 2)
    log(f"ann_recall:   update {out[0]['update_us_per_row']} us/row")
    del ix
    return out


def bench_usearch(d, excl, active, truth, a) -> list[dict]:
    from usearch.index import Index

    Q, b, P = d["Q"], d["b"], d["P"]
    n, dim = Q.shape
    X = np.hstack([Q, b[:, None].astype(np.float32)])
    gc.collect()
    t0 = time.perf_counter()
    ix = Index(ndim=dim + 1, metric="ip", dtype="f32", connectivity=a.hnsw_m, expansion_add=a.hnsw_efc)
    ix.add(np.arange(n), X, threads=a.threads)
    build_s = time.perf_counter() - t0
    mem = ix.memory_usage / n
    log(f"ann_recall: usearch connectivity {a.hnsw_m} expansion_add {a.hnsw_efc}: build {build_s:.1f} s")
    out = []
    for ef in a.ef:
        res = np.zeros((len(P), K), np.int64)
        call = []
        oi, osc = np.empty(K, np.int64), np.empty(K)
        for t in range(len(P)):
            h = int(d["hoff"][t + 1] - d["hoff"][t])
            fetch = min(n, a.lib_cand + h)
            ix.expansion_search = max(ef, fetch)
            _mark(d["hoff"], d["hcat"], t, excl, 1)
            t0 = time.perf_counter_ns()
            y = np.append(P[t], np.float32(1.0))
            m = ix.search(y, fetch, threads=1)
            rescore_filter(P[t], Q, b, np.asarray(m.keys, dtype=np.int64), excl, K, oi, osc)
            call.append(time.perf_counter_ns() - t0)
            _mark(d["hoff"], d["hcat"], t, excl, 0)
            res[t] = oi
        row = {"index": "usearch", "params": f"connectivity {a.hnsw_m}, expansion_add {a.hnsw_efc}, "
                                             f"expansion_search {ef}, fetch {a.lib_cand}+history",
               "recall@10": round(recall(res, truth), 4), "kernel": None, "call": pct(call),
               "build_s": round(build_s, 2), "bytes_per_item": round(mem, 1)}
        out.append(row)
        log(f"ann_recall:   ef {ef}: recall {row['recall@10']:.3f}, call {row['call']}")
    def remove_add(Qd, bd, rows, ix=ix):
        u = np.unique(rows)
        ix.remove(u)
        ix.add(u, np.hstack([Qd[u], bd[u, None].astype(np.float32)]), threads=1)

    per, _Qd, _bd = time_updates(d, a, remove_add, budget_s=a.usearch_update_s)
    for r in out:
        r["update_us_per_row"] = round(float(np.median(per)) / 1e3, 2)
        r["update_p99_us_per_row"] = round(float(np.percentile(per, 99)) / 1e3, 2)
        r["update_batches_timed"] = len(per)
    log(f"ann_recall:   update {out[0]['update_us_per_row']} us/row over {len(per)} batches")
    del ix
    return out


# -- HR@10 on a stream ------------------------------------------------------------------


@njit
def _hr_exact(U, I, cu, P, Q, b, n, excl, active, hoff, hlen, hpool, k, top):
    """Per event of the batch (the state at the batch's start): the user's exact top-k into
    ``top[e]`` (-1: not ranked: a user the model has not learned yet)."""
    scores = np.empty(n)
    osc = np.empty(k)
    for e in range(U.shape[0]):
        top[e, :] = -1
        u = U[e]
        if u < 0 or u >= cu.shape[0] or cu[u] == 0:
            continue
        for h in range(hoff[u], hoff[u] + hlen[u]):
            excl[hpool[h]] = 1
        score_factors(P[u], Q, b, n, scores)
        topk_masked(scores, n, excl, active, k, top[e], osc)
        for h in range(hoff[u], hoff[u] + hlen[u]):
            excl[hpool[h]] = 0


@njit
def _hr_ivf(U, I, cu, P, Q, b, n, excl, active, hoff, hlen, hpool, M, centT, cn, lstart, llen, slot_row, slot_q,
            slot_scale, slot_bias, nprobe, cand, k, top, acc):
    """The index's top-k for the same events: acc[0] += hits, acc[1] += rows shared with the
    exact top-k (``top``), acc[2] += rows of the exact top-k, acc[3] += events ranked."""
    oi = np.empty(k, np.int64)
    osc = np.empty(k)
    for e in range(U.shape[0]):
        if top[e, 0] < 0 and (U[e] < 0 or U[e] >= cu.shape[0] or cu[U[e]] == 0):
            continue
        u = U[e]
        for h in range(hoff[u], hoff[u] + hlen[u]):
            excl[hpool[h]] = 1
        c = ivf_search(P[u], Q, b, n, excl, active, M, centT, cn, lstart, llen, slot_row, slot_q, slot_scale,
                       slot_bias, nprobe, cand, k, oi, osc)
        for h in range(hoff[u], hoff[u] + hlen[u]):
            excl[hpool[h]] = 0
        acc[3] += 1
        for r in range(c):
            if oi[r] == I[e]:
                acc[0] += 1
            for q in range(k):
                if top[e, q] >= 0 and top[e, q] == oi[r]:
                    acc[1] += 1
        for q in range(k):
            if top[e, q] >= 0:
                acc[2] += 1


# (label, IVFIndex settings, refresh every this many events (a multiple of --hr-batch; 0: never))
HR_VARIANTS = [
    ("defaults, refresh every 1000 events", {}, 1000),
    ("defaults, refresh every 10000 events", {}, 10_000),
    ("every row checked, refresh every 1000", {"check_every": 1}, 1000),
    ("copies only (no checks), refresh every 1000", {"check_every": 0}, 1000),
    ("never refreshed", {}, 0),
]


def bench_hr(a) -> dict:
    from recsys_stream.generate import GeneratorSettings, generate
    from recsys_stream.shard import Shard, ShardSettings

    g = GeneratorSettings(shape="zipf", items=100_000, events=a.hr_events, users=20_000, seed=11)
    stream = generate(g)
    sh = Shard(0, ShardSettings(model="implicit", evaluate=False))
    warm = int(0.8 * len(stream))
    B = 20_000
    for s in range(0, warm, B):
        sh.process(stream.slice(s, min(s + B, warm)))
    ia = sh.items.arrays
    n = len(sh.items)
    dim = ia["imp.Q"].shape[1]
    t0 = time.perf_counter()
    variants = [(label, IVFIndex(dim, seed=a.seed, **kw).build(ia["imp.Q"], ia["imp.b"], n), refresh)
                for label, kw, refresh in HR_VARIANTS]
    rng = np.random.default_rng(a.seed)
    known = np.flatnonzero(sh.users.arrays["imp.cu"][: len(sh.users)] > 0)
    Pt = sh.users.arrays["imp.P"][rng.choice(known, TUNE_QUERIES, replace=False)]
    for label, ix, _ in variants:
        ix.tune(Pt, ia["imp.Q"], ia["imp.b"], n, K, a.target)
    log(f"ann_recall: hr: warm-up {warm:,} events, {n:,} rows, builds {time.perf_counter() - t0:.1f} s")
    ia["dirty"][:] = 0
    exact_hits, ranked = 0, 0
    acc = {label: np.zeros(4, np.int64) for label, _, _ in variants}
    cost = {label: [0.0, 0] for label, _, _ in variants}
    rebuilds = {label: [] for label, _, _ in variants}
    pending = {label: [] for label, _, _ in variants}
    for s in range(warm, len(stream), a.hr_batch):
        bt = stream.slice(s, min(s + a.hr_batch, len(stream)))
        uget, iget = sh.users.ids.get, sh.items.ids.get
        U = np.array([uget(u) for u in bt.user], dtype=np.int64)
        I = np.array([iget(i) for i in bt.item], dtype=np.int64)
        n = len(sh.items)
        ia, ua = sh.items.arrays, sh.users.arrays
        hist = (ua["hist.off"], ua["hist.len"], sh.users.history.pool)
        excl = np.zeros(len(ia["active"]), np.uint8)
        top = np.empty((len(bt), K), np.int64)
        base = (U, I, ua["imp.cu"], ua["imp.P"], ia["imp.Q"], ia["imp.b"], n, excl, ia["active"], *hist)
        _hr_exact(*base, K, top)
        ok = top[:, 0] >= 0
        ranked += int(ok.sum())
        exact_hits += int((top[ok] == I[ok, None]).any(axis=1).sum())
        for label, ix, _ in variants:
            _hr_ivf(*base, ix.M, ix.centT, ix.cn, ix.lstart, ix.llen, ix.slot_row, ix.slot_q, ix.slot_scale,
                    ix.slot_bias, ix.nprobe, ix.cand_for(K), K, top, acc[label])
        sh.process(bt)
        ia = sh.items.arrays
        rows = np.flatnonzero(ia["dirty"][: len(sh.items)])
        ia["dirty"][rows] = 0
        done = s + len(bt) - warm
        for label, ix, refresh in variants:
            if not refresh:
                continue
            pending[label].append(rows)
            if done % refresh and s + len(bt) < len(stream):
                continue
            todo = np.unique(np.concatenate(pending[label]))
            pending[label] = []
            t0 = time.perf_counter()
            ix.update(ia["imp.Q"], ia["imp.b"], todo)
            cost[label][0] += time.perf_counter() - t0
            cost[label][1] += len(todo)
            why = ix.needs_rebuild()
            if why:
                rebuilds[label].append({"event": s + len(bt), "why": why})
                ix.build(ia["imp.Q"], ia["imp.b"], len(sh.items))
                ix.tune(Pt, ia["imp.Q"], ia["imp.b"], len(sh.items), K, a.target)
    hr_exact = exact_hits / max(1, ranked)
    out = {"stream": {"items": 100_000, "events": a.hr_events, "users": 20_000, "zipf": g.zipf, "seed": g.seed},
           "warmup_events": warm, "rows": len(sh.items), "ranked_from_state_every_events": a.hr_batch,
           "ranked_events": ranked,
           "hr@10_exact": round(hr_exact, 4), "variants": []}
    for label, ix, refresh in variants:
        h = acc[label]
        hr = h[0] / max(1, h[3])
        st = ix.stats
        out["variants"].append({
            "variant": label, "refresh_every_events": refresh, "hr@10": round(float(hr), 4),
            "relative_gap": round(float(hr / hr_exact - 1.0), 4),
            "recall@10_vs_exact": round(float(h[1] / max(1, h[2])), 4), "nprobe": ix.nprobe, "cand": ix.cand_for(K),
            "nlist": ix.nlist, "check_every": ix.check_every, "misplaced": round(ix.misplaced(), 4),
            "refresh_rows_per_event": round(cost[label][1] / (len(stream) - warm), 1) if refresh else 0,
            "refresh_us_per_row": round(1e6 * cost[label][0] / max(1, cost[label][1]), 2) if refresh else 0,
            "moves_per_row": round(float(st[1] / max(1, st[0])), 4),
            "checked_per_row": round(float(st[4] / max(1, st[0])), 4), "rebuilds": rebuilds[label]})
        log(f"ann_recall: hr: {out['variants'][-1]}")
    log(f"ann_recall: hr: exact {hr_exact:.4f} over {ranked:,} events")
    return out


# -- main ---------------------------------------------------------------------------------


def ivf_variants(n: int):
    """(label, IVFIndex settings, [(nprobe or "tuned", cand or None for the default)])."""
    nl = int(round(2 * math.sqrt(n)))
    return [
        ("defaults", {}, [("tuned", None), (4, None), (8, None), (16, None), (32, None), (64, None), (128, None),
                          (16, 40)]),
        ("metric ip", {"metric": "ip"}, [(8, None), (32, None)]),
        ("float32 copies", {"storage": "float32"}, [(8, None), (32, None)]),
        ("nlist 4 sqrt(n)", {"nlist": 2 * nl}, [(16, None), (64, None)]),
        ("nlist sqrt(n)", {"nlist": max(1, nl // 2)}, [(4, None), (16, None)]),
        ("every row checked", {"check_every": 1}, [(8, None)]),
    ]


def table(results: dict) -> str:
    lines = ["| dataset | rows | index | params | recall@10 | kernel p50 / p99 us | call p50 / p99 us | "
             "update us/row (call; kernel) | build s | bytes/item |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.get("datasets", {}).items():
        for row in r["rows"]:
            kern = f"{row['kernel']['p50_us']} / {row['kernel']['p99_us']}" if row.get("kernel") else "-"
            params = (row.get("variant", "") + ", " if row.get("variant") else "") + row["params"]
            upd = row.get("update_us_per_row", "-")
            if row.get("update_kernel_us_per_row") is not None:
                upd = f"{upd}; {row['update_kernel_us_per_row']}"
            lines.append(f"| {name} | {r['rows_indexed']:,} | {row['index']} | {params} | {row['recall@10']:.3f} | "
                         f"{kern} | {row['call']['p50_us']} / {row['call']['p99_us']} | "
                         f"{upd} | {row['build_s']} | {row['bytes_per_item']} |")
    hr = results.get("hr")
    if hr:
        lines += ["", f"HR@10 on the 100k-item stream ({hr['ranked_events']:,} ranked events after a warm-up of "
                      f"{hr['warmup_events']:,}, {hr['rows']:,} rows, ranked from the state at the start of each "
                      f"{hr['ranked_from_state_every_events']} events): exact {hr['hr@10_exact']}", "",
                  "| index | nprobe (tuned) | HR@10 | vs exact | recall@10 vs exact | refresh us/row | "
                  "rows refreshed/event | moves/row |", "|---|---|---|---|---|---|---|---|"]
        for v in hr["variants"]:
            lines.append(f"| {v['variant']} | {v['nprobe']} | {v['hr@10']} | {100 * v['relative_gap']:+.2f}% | "
                         f"{v['recall@10_vs_exact']} | {v['refresh_us_per_row']} | {v['refresh_rows_per_event']} | "
                         f"{v['moves_per_row']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--indexes", default="exact,ivf,hnswlib,usearch",
                    help="of exact, ivf, hnswlib (ip space), hnswlib-aug (l2 on the MIPS reduction), usearch")
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--update-batches", type=int, default=200)
    ap.add_argument("--usearch-update-s", type=float, default=20.0, help="time budget of usearch's update batches")
    ap.add_argument("--hnsw-m", type=int, default=16)
    ap.add_argument("--hnsw-efc", type=int, default=100)
    ap.add_argument("--ef", default="64,128,256")
    ap.add_argument("--lib-cand", type=int, default=40, help="library candidates besides the user's items")
    ap.add_argument("--threads", type=int, default=1, help="threads of the libraries' builds")
    ap.add_argument("--hr", dest="hr", action="store_true", default=True)
    ap.add_argument("--no-hr", dest="hr", action="store_false")
    ap.add_argument("--hr-events", type=int, default=1_000_000)
    ap.add_argument("--hr-batch", type=int, default=1000,
                    help="events ranked from one state (then learned); the shortest refresh interval")
    ap.add_argument("--target", type=float, default=0.95, help="recall@10 the IVF's nprobe is tuned for")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/ann_recall_cache"))
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    a.ef = [int(x) for x in a.ef.split(",")]
    indexes = a.indexes.split(",")
    path = a.out / "ann_recall.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    vers = versions()
    for dist in ("hnswlib", "usearch"):
        try:
            from importlib.metadata import version

            vers[dist] = version(dist)
        except Exception:
            vers[dist] = "not installed"
    command = " ".join(["nice -n 19 python benchmarks/ann_recall.py", *sys.argv[1:]])
    results.update({"command": command, "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": vers})
    results.setdefault("datasets", {})
    for name in [x for x in a.datasets.split(",") if x]:
        load0 = os.getloadavg()[0]
        t_ds = time.perf_counter()
        d = dataset(name, a.queries, a.cache, a.seed)
        n = len(d["Q"])
        log(f"ann_recall: {name}: {n:,} rows, {len(d['P'])} queries, meta {d['meta']}")
        excl = np.zeros(n, np.uint8)
        active = np.ones(n, np.uint8)
        ex = bench_exact(d, excl, active)
        truth = ex["truth"]
        rows = [ex["row"]] if "exact" in indexes else []
        if "ivf" in indexes:
            rows += bench_ivf(d, excl, active, truth, a, ivf_variants(n))
        for lib, fn in (("hnswlib", bench_hnswlib), ("hnswlib-aug", lambda *x: bench_hnswlib(*x, aug=True)),
                        ("usearch", bench_usearch)):
            if lib in indexes:
                try:
                    rows += fn(d, excl, active, truth, a)
                except ImportError as e:
                    log(f"ann_recall: {lib} not installed ({e}): skipped")
        old = results["datasets"].get(name, {})
        kept = [r for r in old.get("rows", []) if r["index"] not in {x["index"] for x in rows}]
        run = {"command": command, "date": time.strftime("%Y-%m-%d"), "indexes": sorted({r["index"] for r in rows}),
               "loadavg_1min_start": round(load0, 2), "loadavg_1min_end": round(os.getloadavg()[0], 2),
               "wall_s": round(time.perf_counter() - t_ds, 1)}
        results["datasets"][name] = {"rows_indexed": n, "queries": len(d["P"]), "meta": d["meta"],
                                     "history_mean": round(float(np.diff(d["hoff"]).mean()), 1),
                                     "runs": (old.get("runs", []) if kept else []) + [run], "rows": kept + rows}
        a.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
        del d
        gc.collect()
    if a.hr:
        results["hr"] = dict(bench_hr(a), command=command, date=time.strftime("%Y-%m-%d"))
        a.out.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
