"""``recsys-stream compare``: several models on one stream, each with the figures of its own
backtest, and one self-contained HTML report."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import orjson
import pytest

from recsys_stream.generate import GeneratorSettings, generate
from recsys_stream.io.readers import write_events_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("itemknn", "pop", "mf")
# same options for compare and each backtest (one worker: deterministic)
OPTIONS = ("--k", "5", "--seed", "3", "--window-events", "500", "--quiet")
# the figures that must agree (timings and memory differ between runs)
FIGURES = ("events", "invalid", "users", "items", "rmse", "mae", "logloss", "auc", "hr@5", "mrr@5", "ndcg@5",
           "coverage@5", "params", "k", "seed", "format", "data")


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recsys_stream.cli", *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A generated log as JSON Lines, plus a malformed line (a dead letter for every model)
    and a rating of 9 (valid for itemknn and pop, outside mf's 1..5: left out for mf only)."""
    path = tmp_path_factory.mktemp("compare") / "events.jsonl"
    ev = generate(GeneratorSettings(events=3_000, users=150, items=100, seed=13))
    write_events_jsonl(str(path), ev)
    with open(path, "ab") as f:
        f.write(b"{not json\n")
        f.write(orjson.dumps({"user": ev.user[0], "item": ev.item[5], "ts": float(ev.ts[1500]), "type": "rating",
                              "value": 9.0}) + b"\n")
    return str(path)


@pytest.fixture(scope="module")
def compared(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("compare-out")
    proc = cli("compare", data, "--models", ",".join(MODELS), *OPTIONS, "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, str(out)


def test_each_model_has_the_figures_of_its_own_backtest(data, compared):
    proc, _out = compared
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == len(MODELS) + 1
    per_model, keyed = lines[:-1], lines[-1]
    assert [s["model"] for s in per_model] == list(MODELS)
    assert list(keyed) == list(MODELS) and all(keyed[s["model"]] == s for s in per_model)
    for model in MODELS:
        b = cli("backtest", data, "--model", model, *OPTIONS, "--show", "0")
        assert b.returncode == 0, b.stderr[-3000:]
        alone = json.loads(b.stdout.splitlines()[-1])
        mine = keyed[model]
        assert {f: mine.get(f) for f in FIGURES} == {f: alone.get(f) for f in FIGURES}, model
    # the figures are the models' own (not one run repeated), and the range check is per model
    assert keyed["itemknn"]["hr@5"] != keyed["pop"]["hr@5"] and "rmse" in keyed["mf"]
    assert keyed["itemknn"]["invalid"] == keyed["pop"]["invalid"] == 1 and keyed["mf"]["invalid"] == 2
    assert keyed["mf"]["events"] == keyed["pop"]["events"] - 1
    assert all(s["peak_rss_mb"] > 0 and s["memory"].startswith("process peak RSS") for s in per_model)


def test_report_is_self_contained_with_a_plot_per_curve_family(compared):
    _proc, out = compared
    with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
        page = f.read()
    imgs = re.findall(r"<img alt='([^']*)' src='([^']*)'", page)
    # itemknn and pop rank, mf predicts ratings; no model here has a like model
    assert sorted(alt for alt, _src in imgs) == ["catalog coverage", "ranking", "rating error"]
    assert page.count("<img") == len(imgs)
    assert all(src.startswith("data:image/png;base64,") and len(src) > 5_000 for _alt, src in imgs)
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"<(script|link|iframe)\b|url\(|@import", page)
    assert re.findall(r"\bsrc=", page) == ["src="] * len(imgs)
    # the table: a row per model with its final hr@5, and the dead-letter count
    with open(os.path.join(out, "summary.json"), "rb") as f:
        summary = orjson.loads(f.read())
    header = re.search(r"<tr><th>model</th>(.*?)</tr>", page).group(1)
    cols = re.findall(r"<th>([^<]*)</th>", header)
    assert cols[:2] == ["rmse", "mae"] and "hr@5" in cols and "events_per_s" in cols and "peak_rss_mb" in cols
    for model, metric in (("itemknn", "hr@5"), ("pop", "hr@5"), ("mf", "rmse"), ("pop", "coverage@5")):
        row = re.search(rf"<tr><td>{model}</td>(.*?)</tr>", page).group(1)
        cells = re.findall(r"<td>([^<]*)</td>", row)
        assert cells[cols.index(metric)] == f"{summary[model][metric]:.4f}", (model, metric)
    assert "Dead letters: <b>1</b> malformed line(s)" in page
    with open(os.path.join(out, "curves.csv")) as f:
        rows = list(csv.DictReader(f))
    assert {r["model"] for r in rows} == set(MODELS)
    assert os.path.exists(os.path.join(out, "dead-letter.jsonl"))


def test_a_bad_model_name_exits_2_with_one_line(data):
    proc = cli("compare", data, "--models", "itemknn,nosuchmodel")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "'nosuchmodel'" in proc.stderr
    proc = cli("compare", data, "--models", "itemknn,pop", "--dim", "8")  # no model of these has a dim
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "--param dim" in proc.stderr


def browser() -> str | None:
    """A headless Chromium: scripts/test.sh installs Debian's ``chromium`` (and sets
    RECSYS_REQUIRE_BROWSER, so CI fails instead of skipping when there is none)."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None and os.environ.get("RECSYS_REQUIRE_BROWSER"):
        pytest.fail("no headless browser (chromium) on PATH, and RECSYS_REQUIRE_BROWSER is set")
    return found


def page_requests(exe: str, page, tmp_path) -> tuple[str, set]:
    """Load ``page`` in headless Chromium: (the DOM after load, the URLs the page itself
    requested). Chromium's own background requests (updates, sign-in) are in its net log
    too, with the initiator "not an origin"; a page's carry its origin ("null" for a file)."""
    netlog = tmp_path / f"{page.stem}.net.json"
    proc = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                           "--no-first-run", "--disable-background-networking", "--disable-component-update",
                           "--disable-sync", "--disable-extensions", "--host-resolver-rules=MAP * ~NOTFOUND",
                           f"--log-net-log={netlog}", f"--user-data-dir={tmp_path / 'profile'}",
                           "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(netlog, "rb") as f:
        events = orjson.loads(f.read())["events"]
    urls = {ev["params"]["url"] for ev in events
            if "url" in ev.get("params", {}) and ev["params"].get("initiator", "not an origin") != "not an origin"}
    return proc.stdout, urls


def test_report_renders_in_a_real_browser_without_requests(compared, tmp_path):
    """The page as a browser sees it: every plot decodes to an image, the table is there,
    and loading it requests nothing (checked against a page that does)."""
    exe = browser()
    if exe is None:
        pytest.skip("no headless browser (chromium) installed")
    _proc, out = compared
    with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
        page = f.read()
    # a copy with a probe: the title becomes "<decoded images> of <images>" once loaded
    probe = ("<script>addEventListener('load', () => { const im = [...document.images]; document.title = "
             "im.filter(i => i.complete && i.naturalWidth > 100).length + ' of ' + im.length; });</script>")
    probed = tmp_path / "probed.html"
    probed.write_text(page + probe, encoding="utf-8")
    dom, urls = page_requests(exe, probed, tmp_path)
    title = re.search(r"<title>([^<]*)</title>", dom)
    assert title is not None and title.group(1) == "3 of 3", dom[:300]  # three plots, each decoded
    assert "<td>itemknn</td>" in dom and "<td>mf</td>" in dom
    assert not [u for u in urls if not u.startswith(("file:", "data:"))], urls
    # the detector sees a page's external request
    control = tmp_path / "control.html"
    control.write_text(page + "<img src='https://example.com/pixel.png'>", encoding="utf-8")
    _dom, urls = page_requests(exe, control, tmp_path)
    assert "https://example.com/pixel.png" in urls


def test_peers_are_river_on_the_same_events_with_the_same_protocol(data, tmp_path):
    """``--peers``: River's BiasedMF and FTRL replayed prequentially on the stream the
    models saw (BiasedMF on the events mf learns from), with the figures of River run
    here by hand, and popularity added; the report's table has a row for each."""
    import river  # a test dependency (pyproject.toml's test extra): never skipped
    from river import linear_model, optim, reco

    from recsys_stream.events import RATING
    from recsys_stream.io.readers import read_events
    from recsys_stream.metrics import auc_score, logloss

    proc = cli("compare", data, "--models", "mf", "--peers", *OPTIONS, "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    keyed = json.loads(proc.stdout.splitlines()[-1])
    assert list(keyed) == ["mf", "pop", "river-biasedmf", "river-ftrl"]
    ev = read_events(data, value_range=None).events  # as compare reads it (time order)
    rated = [(u, i, float(v)) for u, i, v, t in zip(ev.user, ev.item, ev.value, ev.etype)
             if t == RATING and 1.0 <= v <= 5.0]
    mf = reco.BiasedMF(n_factors=10, bias_optimizer=optim.SGD(0.025), latent_optimizer=optim.SGD(0.025),
                       l2_bias=0.0, l2_latent=0.0, seed=3,
                       latent_initializer=optim.initializers.Normal(mu=0.0, sigma=0.1, seed=3))
    err = []
    for u, i, r in rated:
        err.append(np.float32(mf.predict_one(u, i)) - np.float32(r))
        mf.learn_one(u, i, r)
    rmse = float(np.sqrt(np.mean(np.square(np.array(err, dtype=np.float64)))))
    peer = keyed["river-biasedmf"]
    assert peer["events"] == len(rated) == keyed["mf"]["events"]
    assert peer["rmse"] == pytest.approx(rmse, rel=1e-6) and peer["peer"] == f"river {river.__version__}"
    lr = linear_model.LogisticRegression(optimizer=optim.FTRLProximal(alpha=0.05, beta=1.0, l1=0.0, l2=1.0),
                                         intercept_lr=0.01)
    prob, y = [], []
    for u, i, v, t in zip(ev.user, ev.item, ev.value, ev.etype):
        x = {"u=" + u: 1.0, "i=" + i: 1.0}
        like = bool(v >= 4.0) if t == RATING else bool(t != RATING)  # the generated log is all ratings
        prob.append(lr.predict_proba_one(x)[True])
        lr.learn_one(x, like)
        y.append(float(like))
    prob32, y = np.array(prob, dtype=np.float32), np.array(y)
    assert keyed["river-ftrl"]["events"] == len(ev)
    assert keyed["river-ftrl"]["logloss"] == pytest.approx(logloss(prob32, y), rel=1e-6)
    assert keyed["river-ftrl"]["auc"] == pytest.approx(auc_score(prob32.astype(np.float64), y), rel=1e-6)
    page = open(os.path.join(tmp_path, "report.html"), encoding="utf-8").read()
    for name in keyed:
        assert f"<tr><td>{name}</td>" in page, name
