"""The factor models with their retrieval index against the exact scan (issue #9).

On generated large-catalog streams (``zipf`` shape, as ``catalog_scale.py``), each model
runs one prequential backtest with ``--param ann=auto`` (the index from 20,000 items on)
and one with ``ann=off`` (the exact scan), each in its own process, alternated
``--repeat`` times; per run: events/s, HR@10, peak RSS, and the lists file. For
``implicit``, whose learning never reads its lists, both runs hold the same state at every
event (tests/test_ann_models.py checks the digest), so the exact run's list at each
(user, version) is the truth and the overlap of the two lists is the index's recall@10
along the stream, on the model's own vectors as they are at that event. For the hybrid,
whose re-ranker learns from its candidates, the two runs' states drift apart: HR@10 and
speed only. ``--variants`` compares several index settings against the same exact run
(e.g. ``"ann_recall=0.96;ann_recall=0.98"``). ``--speed-events`` adds runs with the
default index over a longer stream at the largest size (the exact scan takes too long
there).

    python benchmarks/ann_models.py --out benchmarks/results
    python benchmarks/ann_models.py --sizes 1000000 --events 200000 --models implicit \
        --variants "ann_recall=0.96;ann_recall=0.98;ann_recall=0.99" --speed-events 0
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import orjson

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from backtest_vs_peers import machine, versions  # noqa: E402
from catalog_scale import run_cmd  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def command(model: str, ann: str, items: int, events: int, a, lists: str, params: str = "") -> list[str]:
    extra = [f"--param={kv}" for kv in params.split(",") if kv]
    return [sys.executable, "-m", "recsys_stream.cli", "backtest", "--model", model, "--param", f"ann={ann}", *extra,
            "--gen-events", str(events), "--gen-users", str(a.users), "--gen-items", str(items), "--gen-shape", "zipf",
            "--gen-groups", str(a.groups), "--gen-zipf", str(a.zipf), "--seed", str(a.seed), "--quiet", "--show",
            "0", "--no-baseline", "--lists", lists]


def read_lists(path: str) -> dict:
    out = {}
    with open(path, "rb") as f:
        for line in f:
            r = orjson.loads(line)
            out[(r["user"], r["version"])] = r["items"]
    return out


def recall(test: dict, truth: dict) -> tuple[float, int]:
    """Mean overlap of the lists at the same (user, version), over lists the truth fills."""
    hits = want = 0
    for key, items in truth.items():
        got = test.get(key)
        if got is None or not items:
            continue
        hits += len(set(got) & set(items))
        want += len(items)
    return (hits / want if want else float("nan")), want


def recall_in_child(test: str, truth: str) -> tuple[float, int]:
    """``recall`` in a process of its own: the lists' dictionaries are large, and a parent
    that grew would hand its peak RSS to every later child (``ru_maxrss`` survives exec)."""
    import subprocess

    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--recall", test, truth], check=True,
                          capture_output=True, text=True)
    r, n = json.loads(proc.stdout)
    return r, n


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="100000,1000000", help="catalog sizes (comma-separated)")
    ap.add_argument("--events", type=int, default=500_000)
    ap.add_argument("--users", type=int, default=25_000)
    ap.add_argument("--groups", type=int, default=20)
    ap.add_argument("--zipf", type=float, default=1.1)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--models", default="implicit,hybrid")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--speed-events", type=int, default=2_000_000, help="index-only runs at the largest size (0: none)")
    ap.add_argument("--max-rss-gb", type=float, default=16.0)
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--variants", default="", help="index settings to compare, ';'-separated, each k=v[,k=v] "
                    "model parameters (default: the defaults)")
    ap.add_argument("--out", default=None, help="write ann_models.json here")
    ap.add_argument("--recall", nargs=2, metavar=("TEST", "TRUTH"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.recall:
        print(json.dumps(recall(read_lists(a.recall[0]), read_lists(a.recall[1]))))
        return 0
    variants = a.variants.split(";") if a.variants else [""]
    sizes = [int(x) for x in a.sizes.split(",") if x]
    models = [m for m in a.models.split(",") if m]
    t_all = time.perf_counter()
    rows = []
    tmp = tempfile.mkdtemp(prefix="ann-models-")
    for n in sizes:
        for model in models:
            labels = ["off", *[f"auto {v}".strip() for v in variants]]
            runs: dict = {x: [] for x in labels}
            rec: dict = {x: [] for x in labels[1:]}
            for rep in range(a.repeat):
                paths = {}
                for label in labels:
                    ann, _, params = label.partition(" ")
                    paths[label] = f"{tmp}/{model}-{n}-{len(paths)}.jsonl"
                    log(f"ann_models: {model} {n:,} items, ann={ann} {params}, run {rep + 1}/{a.repeat}")
                    r = run_cmd(command(model, ann, n, a.events, a, paths[label], params), int(a.max_rss_gb * 2**20),
                                a.timeout)
                    if "error" in r:
                        log(f"  failed: {r['error'][:1500]}")
                    else:
                        log(f"  {r['events_per_s']:,.0f} events/s, HR@10 {r['hr@10']:.4f}, peak RSS "
                            f"{r['peak_rss_mib']:,.0f} MiB")
                    runs[label].append(r)
                for label in labels[1:]:
                    if model == "implicit" and "error" not in runs[label][-1] and "error" not in runs["off"][-1]:
                        rc, nl = recall_in_child(paths[label], paths["off"])
                        rec[label].append(rc)
                        log(f"  {label}: recall@10 of the index along the stream {rc:.4f} over {nl:,} list places")
                for p in paths.values():
                    Path(p).unlink(missing_ok=True)
            for label in labels:
                ok = [r for r in runs[label] if "error" not in r]
                row = {"model": model, "items": n, "events": a.events, "ann": label,
                       "events_per_s": median([r["events_per_s"] for r in ok]),
                       "events_per_s_all": [r["events_per_s"] for r in ok],
                       "hr@10": median([r["hr@10"] for r in ok]), "items_seen": median([r["items"] for r in ok]),
                       "peak_rss_mib": median([r["peak_rss_mib"] for r in ok]),
                       "errors": [r["error"][:300] for r in runs[label] if "error" in r]}
                if rec.get(label):
                    row["recall@10"] = median(rec[label])
                exact = next((x for x in rows[::-1] if x["model"] == model and x["items"] == n
                                           and x["ann"] == "off"), None) if label != "off" else None
                if exact and row["events_per_s"] and exact["events_per_s"]:
                    row["speedup"] = round(row["events_per_s"] / exact["events_per_s"], 2)
                    row["hr_relative"] = round(row["hr@10"] / exact["hr@10"] - 1.0, 4)
                rows.append(row)
    speed = []
    if a.speed_events:
        n = max(sizes)
        for model in models:
            for rep in range(a.repeat):
                log(f"ann_models: {model} {n:,} items, {a.speed_events:,} events, ann=auto, run {rep + 1}/{a.repeat}")
                r = run_cmd(command(model, "auto", n, a.speed_events, a, f"{tmp}/speed.jsonl"),
                            int(a.max_rss_gb * 2**20), a.timeout)
                Path(f"{tmp}/speed.jsonl").unlink(missing_ok=True)
                if "error" in r:
                    log(f"  failed: {r['error'][:300]}")
                else:
                    log(f"  {r['events_per_s']:,.0f} events/s, HR@10 {r['hr@10']:.4f}, {r['items']:,} items, peak RSS "
                        f"{r['peak_rss_mib']:,.0f} MiB")
                speed.append({"model": model, "items": n, "events": a.speed_events, "items_seen": r.get("items"),
                              **{k: r.get(k) for k in ("events_per_s", "hr@10", "peak_rss_mib", "error")}})
    report = {"command": " ".join(["python", "benchmarks/ann_models.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(),
              "wall_s": round(time.perf_counter() - t_all, 1), "rows": rows, "speed": speed}
    print("| model | items (seen) | ranking | events/s | HR@10 | recall@10 | peak RSS (MiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rc = r.get("recall@10")
        print(f"| {r['model']} | {r['items']:,} ({r['items_seen'] or 0:,.0f}) | {r['ann']} | "
              f"{r['events_per_s'] or 0:,.0f} | {r['hr@10'] or 0:.4f} | {'' if rc is None else format(rc, '.4f')} | "
              f"{r['peak_rss_mib'] or 0:,.0f} |")
    for s in speed:
        print(f"| {s['model']} ({s['events']:,} events) | {s['items']:,} ({s.get('items_seen') or 0:,}) | auto | "
              f"{s.get('events_per_s') or 0:,.0f} | {s.get('hr@10') or 0:.4f} | | {s.get('peak_rss_mib') or 0:,.0f} |")
    if a.out:
        Path(a.out).mkdir(parents=True, exist_ok=True)
        Path(a.out, "ann_models.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
