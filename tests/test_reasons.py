"""Reasons with every recommendation (``--reasons``; ``kernels.explain``, ``records``).

Checked per model: a reason per item, present only when asked for; every "because" names
an item of the user's own history at that event; item-to-item reasons are the recent
item contributing most and its share, recomputed here in plain Python from the state at
the event (dense counts and bounded neighbour lists); factor reasons are the most similar
recent item by cosine; the hybrid names the sources that proposed the item; a read gives
the reasons of the list emitted at the same version; and the flag reaches the list
records of ``backtest --lists``, TOML and ``compare``'s report.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import orjson
import pytest

from recsys_stream.generate import GeneratorSettings, generate
from recsys_stream.models import MODELS, model_params
from recsys_stream.shard import Shard, ShardSettings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
K = 6


@pytest.fixture(scope="module")
def stream():
    return generate(GeneratorSettings(events=1_500, users=40, items=80, seed=11))


def shard(model: str, reasons: bool = True, **params) -> Shard:
    return Shard(0, ShardSettings(model=model, params=model_params(model, **params), seed=5, k=K, lists="all",
                                  reasons=reasons))


def one_by_one(sh: Shard, stream, n: int):
    """Each of the first ``n`` events as its own batch: (event index, record, shard) after
    each, so the state the test reads is the state the list was computed from."""
    for e in range(n):
        rec = sh.process(stream.take(np.array([e]))).lists[0]
        yield e, rec


def histories(stream) -> list[set]:
    """The user's items up to and including each event."""
    seen: dict = {}
    out = []
    for u, i in zip(stream.user, stream.item):
        seen.setdefault(u, set()).add(i)
        out.append(set(seen[u]))
    return out


@pytest.mark.parametrize("model", list(MODELS))
def test_a_reason_per_item_naming_an_item_the_user_had(model, stream):
    sh = shard(model)
    had = histories(stream)
    res = sh.process(stream)
    assert len(res.lists) == len(stream)
    kinds = set()
    for e, rec in enumerate(res.lists):
        assert len(rec["reasons"]) == len(rec["items"]), rec
        for item, why in zip(rec["items"], rec["reasons"]):
            kinds.add(tuple(sorted(why)))
            if "because" in why:
                assert why["because"] in had[e] and why["because"] != item, (e, rec)
            if "share" in why:
                assert 0.0 < why["share"] <= 1.0
            if "similarity" in why:
                assert -1.0 <= why["similarity"] <= 1.0
            if model == "hybrid":
                assert why["sources"] and set(why["sources"]) <= {"itemknn", "implicit", "popular"}
                if "share" in why:
                    assert "itemknn" in why["sources"]
                elif "similarity" in why:
                    assert "implicit" in why["sources"]
                else:  # popularity alone put it there
                    assert why["source"] == "popular" and "implicit" not in why["sources"]
    # the kinds each model must give on this stream (and may give: a factor model's list of
    # a user it has not learned is the popularity list, not reached here after learning)
    must = {"itemknn": {("because", "share"), ("source",)}, "implicit": {("because", "similarity")},
            "mf": {("because", "similarity")}, "pop": {("source",)}, "ftrl": {("source",)},
            "hybrid": {("because", "share", "sources"), ("source", "sources")}}
    may = {"implicit": {("source",)}, "mf": {("source",)}, "hybrid": {("because", "similarity", "sources")}}
    if model in must:
        assert must[model] <= kinds <= must[model] | may.get(model, set()), kinds
    else:  # a model added to the registry: at least one reason that names an item or a source
        assert kinds
    sources = {w.get("source") for rec in res.lists for w in rec["reasons"]} - {None}
    assert sources <= {"popular", "model"}
    if model == "pop":
        assert sources == {"popular"}
    if model == "ftrl":
        assert sources == {"model"}


@pytest.mark.parametrize("model", list(MODELS))
def test_no_reasons_when_off_and_the_same_lists(model, stream):
    on, off = shard(model), shard(model, reasons=False)
    a, b = on.process(stream), off.process(stream)
    assert all("reasons" not in rec for rec in b.lists)
    strip = [{k: v for k, v in rec.items() if k not in ("reasons", "_ingest_ts")} for rec in a.lists]
    assert strip == [{k: v for k, v in rec.items() if k != "_ingest_ts"} for rec in b.lists]
    assert "reasons" not in off.recommend(stream.user[0])


def knn_expected(sh: Shard, user: str, item: str, score: float, p) -> tuple[str | None, float]:
    """The reason of ``item`` for ``user`` from the shard's state, in plain Python."""
    ids = sh.items.ids.ids
    u = sh.users.ids.get(user)
    j = sh.items.ids.get(item)
    ua, ia = sh.users.arrays, sh.items.arrays
    pool = sh.items.pools["knn"]
    n_ev = int(ua["uev"][u])
    ring = ua["recent"][u]
    recent = [int(ring[(n_ev - 1 - b) % len(ring)]) for b in range(min(p.recent, n_ev, len(ring)))]
    cnt = ia["knn.n"]

    def count(r: int) -> float:
        js, cs = pool.row(ia, r)
        hit = np.flatnonzero(js == j)
        return float(cs[hit[0]]) if len(hit) else 0.0

    contrib: dict[int, float] = {}
    for back, r in enumerate(recent):
        if r != j and cnt[r] > 0:
            contrib[r] = contrib.get(r, 0.0) + p.alpha ** back / cnt[r] ** p.beta * count(r)
    best = max((c, -r) for r, c in contrib.items()) if contrib else (0.0, 0)
    if best[0] <= 0.0:
        return None, 0.0
    return ids[-best[1]], min(1.0, best[0] * float(ia["knn.inv"][j]) / score)


@pytest.mark.parametrize("dense_items", [4096, 0], ids=["dense", "lists"])
def test_itemknn_reason_is_the_top_contributor_and_its_share(dense_items, stream):
    params = dict(dense_items=dense_items, neighbors=8)  # lists: small rows, so evictions happen
    sh = shard("itemknn", **params)
    p = model_params("itemknn", **params)
    checked = popular = 0
    for _e, rec in one_by_one(sh, stream, 500):
        for item, score, why in zip(rec["items"], rec["scores"], rec["reasons"]):
            because, share = knn_expected(sh, rec["user"], item, score, p)
            if because is None:
                assert why == {"source": "popular"}, (rec, item)
                popular += 1
            else:
                assert why["because"] == because and math.isclose(why["share"], share, abs_tol=2e-4), (why, because,
                                                                                                      share)
                checked += 1
    assert checked > 1000 and popular > 50, (checked, popular)
    assert sh.items.pools["knn"].is_dense == (dense_items > 0)


@pytest.mark.parametrize("model,prefix", [("implicit", "imp"), ("mf", "mf")])
def test_factor_reason_is_the_most_similar_recent_item(model, prefix, stream):
    sh = shard(model)
    checked = 0
    for _e, rec in one_by_one(sh, stream, 400):
        u = sh.users.ids.get(rec["user"])
        n_ev = int(sh.users.arrays["uev"][u])
        ring = sh.users.arrays["recent"][u]
        recent = {int(ring[(n_ev - 1 - b) % len(ring)]) for b in range(min(n_ev, len(ring)))}
        Q = sh.items.arrays[f"{prefix}.Q"].astype(np.float64)
        for item, why in zip(rec["items"], rec["reasons"]):
            j = sh.items.ids.get(item)
            cos = {r: float(Q[j] @ Q[r] / math.sqrt((Q[j] @ Q[j]) * (Q[r] @ Q[r]))) for r in recent if r != j}
            best = max(cos.values())
            assert math.isclose(why["similarity"], best, abs_tol=1e-4), (why, best)
            # the named item is the best (or tied with it to float precision)
            assert cos[sh.items.ids.get(why["because"])] >= best - 1e-5
            checked += 1
    assert checked > 1500


@pytest.mark.parametrize("model", list(MODELS))
def test_a_read_gives_the_reasons_of_the_list_emitted_at_the_same_version(model, stream):
    sh = shard(model)
    for _e, rec in one_by_one(sh, stream, 120):
        read = sh.recommend(rec["user"])
        assert read["version"] == rec["version"]
        assert read["items"] == rec["items"] and read["reasons"] == rec["reasons"], (model, rec, read)
    unknown = sh.recommend("nobody-has-seen-me")
    assert unknown["reasons"] and all(w.get("source") == "popular" for w in unknown["reasons"])


def cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recsys_stream.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, **kw)


def test_backtest_lists_file_carries_reasons_from_the_flag_or_toml(tmp_path):
    common = ("--gen-events", "3000", "--gen-users", "100", "--gen-items", "150", "--model", "hybrid", "--quiet",
              "--show", "0")
    on = tmp_path / "on.jsonl"
    proc = cli("backtest", *common, "--reasons", "--lists", str(on))
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = [orjson.loads(line) for line in on.read_bytes().splitlines()]
    assert recs and all(len(r["reasons"]) == len(r["items"]) for r in recs)
    assert any("share" in w for r in recs for w in r["reasons"])
    toml = tmp_path / "job.toml"
    toml.write_text("[job]\nreasons = true\n")
    via_toml = tmp_path / "toml.jsonl"
    proc = cli("backtest", *common, "--config", str(toml), "--lists", str(via_toml))
    assert proc.returncode == 0, proc.stderr[-2000:]
    strip = [{k: v for k, v in orjson.loads(line).items() if k != "emitted_at"}
             for line in via_toml.read_bytes().splitlines()]
    assert strip == [{k: v for k, v in r.items() if k != "emitted_at"} for r in recs]
    off = tmp_path / "off.jsonl"
    proc = cli("backtest", *common, "--lists", str(off))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert all("reasons" not in orjson.loads(line) for line in off.read_bytes().splitlines())


def test_compare_report_shows_the_final_lists_with_reasons(tmp_path):
    proc = cli("compare", "--gen-events", "3000", "--gen-users", "100", "--gen-items", "150", "--models",
               "itemknn,pop", "--reasons", "--show", "2", "--quiet", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "Final lists of the most active users" in page and "(because " in page and "(popular)" in page
