"""The ``backtest`` command's contract: progress on stderr, one JSON object on the last
line of stdout, the files of --out, the dead letter."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest

from recsys_stream.generate import GeneratorSettings, generate

REQUIRED = {"events", "invalid", "users", "items", "seconds", "events_per_s", "load_s", "startup_s"}


def cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "recsys_stream.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=600)
    return proc


@pytest.fixture(scope="module")
def udata(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    b = generate(GeneratorSettings(events=5_000, users=300, items=200, seed=3))
    path = d / "u.data"
    with open(path, "w") as f:
        for e in range(len(b)):
            f.write(f"{b.user[e]}\t{b.item[e]}\t{int(b.value[e])}\t{int(b.ts[e])}\n")
            if e == 10:
                f.write("this line is broken\n")
    return str(path)


def last_json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    return orjson.loads(lines[-1])


def test_backtest_mf_json_and_out_dir(udata, tmp_path):
    out = tmp_path / "run"
    res = last_json(cli("backtest", udata, "--model", "mf", "--dim", "8", "--out", str(out)))
    assert REQUIRED <= set(res)
    assert res["events"] == 5_000 and res["invalid"] == 1
    assert res["users"] <= 300 and res["items"] <= 200
    assert 0.5 < res["rmse"] < 1.5 and "mae" in res
    assert "hr@10" not in res  # ranking metrics only with --rank for mf
    for name in ("metrics.json", "curves.csv", "report.html", "dead-letter.jsonl"):
        assert (out / name).exists(), name
    assert orjson.loads((out / "metrics.json").read_bytes())["rmse"] == res["rmse"]
    dead = orjson.loads((out / "dead-letter.jsonl").read_bytes().splitlines()[0])
    assert dead["line"] == 12 and dead["raw"] == "this line is broken" and "expected 4 fields" in dead["reason"]
    assert res["dead_letter"] == str(out / "dead-letter.jsonl")
    assert any(p.startswith("curve-") and p.endswith(".png") for p in os.listdir(out))


def test_backtest_ranking_metrics_follow_k(udata):
    proc = cli("backtest", udata, "--model", "mf", "--rank", "--k", "5", "--show", "0")
    res = last_json(proc)
    assert {"hr@5", "mrr@5", "ndcg@5", "coverage@5", "rmse"} <= set(res)
    assert "backtest:" in proc.stderr  # progress
    # without --out the dead letter lands beside the input
    assert res["dead_letter"] == udata + ".dead-letter.jsonl" and os.path.exists(res["dead_letter"])


def test_backtest_ftrl_with_side_features(tmp_path, udata):
    users = tmp_path / "u.user"
    users.write_text("".join(f"u{j}|{20 + j % 40}|{'MF'[j % 2]}|occ{j % 7}|0\n" for j in range(300)))
    res = last_json(cli("backtest", udata, "--model", "ftrl", "--user-features", str(users), "--show", "0"))
    assert 0 < res["logloss"] < 1 and 0.5 < res["auc"] <= 1


def test_generated_default_prints_lists_and_beats_popularity():
    proc = cli("backtest", "--gen-events", "20000", "--gen-users", "800", "--gen-items", "400")
    res = last_json(proc)
    assert res["format"] == "generated"
    assert "Recommendations after the replay" in proc.stdout
    assert res["hr@10"] > res["baseline_pop"]["hr@10"]


def test_bad_arguments_are_clear_errors(udata):
    proc = cli("backtest", udata, "--model", "pop", "--dim", "8")
    assert proc.returncode == 2 and "model 'pop': 'dim' does not apply to this model" in proc.stderr
    proc = cli("backtest", "/nonexistent/u.data")
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_run_embedded_prints_lists_and_ends_with_metrics():
    proc = subprocess.run([sys.executable, "-m", "recsys_stream.cli", "run", "--events", "6000", "--rate", "6000",
                           "--refresh-interval", "0.2"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    summary = orjson.loads(lines[-1])
    assert summary["events"] == 6000 and summary["hr@10"] > 0 and summary["lists"] == len(lines) - 1
    first = orjson.loads(lines[0])
    assert {"user", "items", "version", "trigger", "emitted_at"} <= set(first)
    assert "run:" in proc.stderr  # progress
