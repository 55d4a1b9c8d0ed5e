"""recsys-stream backtests against River and Vowpal Wabbit, side by side, on one stream.

Runs, in one session and in turn, our ``recsys-stream backtest`` (the real dataflow,
through the CLI) for each model and ``benchmarks/peers.py`` for each peer, ``--repeat``
times each, and reports medians of events/s with each run's accuracy. The protocol is
the same everywhere: MovieLens 100K ``u.data`` in timestamp order (stable), one
prequential pass (predict, then learn); ranking: every item seen so far except the
user's own, ties to the item seen first.

``--passes P`` replays the stream P times for the speed figures (1,000,000 events at
P=10); accuracy is taken from the one-pass runs. Writes JSON and a Markdown table
(``--out``), including the command, the machine and library versions.

    python benchmarks/backtest_vs_peers.py --repeat 3 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = (ROOT / ".." / "shared" / "datasets" / "ml-100k").resolve()

# (label, backtest arguments); dims are stated in the label, as every figure must
OURS = [
    ("mf dim16", ["--model", "mf"]),
    ("ftrl +side features", ["--model", "ftrl", "--user-features", "{data}/u.user", "--item-features", "{data}/u.item"]),
    ("pop", ["--model", "pop"]),
    ("itemknn", ["--model", "itemknn"]),
    ("implicit dim32", ["--model", "implicit"]),
    ("implicit dim32 int8", ["--model", "implicit", "--quantized"]),
    ("hybrid dim32", ["--model", "hybrid"]),
]
PEERS = ["river-biasedmf", "vw-mf", "river-ftrl", "vw-ftrl", "pop"]
METRICS = ["rmse", "mae", "logloss", "auc", "hr@10", "mrr@10", "ndcg@10"]


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_ours(data: Path, args: list[str], passes: int) -> dict:
    cmd = [sys.executable, "-m", "recsys_stream.cli", "backtest", str(data / "u.data"), "--quiet", "--show", "0",
           "--passes", str(passes)] + [a.replace("{data}", str(data)) for a in args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_peers(data: Path, passes: int, repeat: int, tuned: bool) -> dict:
    cmd = [sys.executable, str(HERE / "peers.py"), "--data", str(data), "--passes", str(passes),
           "--repeat", str(repeat)] + (["--tuned"] if tuned else [])
    for p in PEERS:
        cmd += ["--peer", p]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peers"]


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("bytewax", "numba", "numpy", "river", "vowpalwabbit"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def machine() -> dict:
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem, 1), "os": platform.platform()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="ml-100k folder (default ../shared/...)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration (medians)")
    ap.add_argument("--passes", type=int, default=10, help="passes for the speed runs (10: 1,000,000 events)")
    ap.add_argument("--out", type=Path, help="folder for compare.json and compare.md")
    a = ap.parse_args(argv)
    data = a.data.resolve()
    if not (data / "u.data").exists():
        sys.exit(f"{data}/u.data not found; pass --data (MovieLens 100K, research use only)")
    t0 = time.time()
    rows = []
    for label, args in OURS:
        acc = None
        speeds = []
        for r in range(a.repeat):
            log(f"[ours] {label}: run {r + 1}/{a.repeat} (1 pass, then {a.passes} passes)")
            one = run_ours(data, args, 1)
            acc = acc or one
            many = run_ours(data, args, a.passes)
            speeds.append(many["events_per_s"])
        rows.append({"system": "recsys-stream", "config": label, **{m: acc.get(m) for m in METRICS},
                     "events_per_s_1pass": acc["events_per_s"], "speed_events": a.passes * acc["events"],
                     "events_per_s": statistics.median(speeds), "events_per_s_all": speeds,
                     "startup_s": acc["startup_s"]})
    log("[peers] one pass (accuracy), library defaults and tuned settings")
    peers_default = run_peers(data, 1, 1, tuned=False)
    peers_tuned = run_peers(data, 1, 1, tuned=True)
    log(f"[peers] {a.passes} passes (speed), tuned, {a.repeat} repeats")
    peers_speed = run_peers(data, a.passes, a.repeat, tuned=True)
    for name in PEERS:
        for variant, res in (("defaults", peers_default[name]), ("tuned on this stream", peers_tuned[name])):
            rows.append({"system": name, "config": variant, **{m: res.get(m) for m in METRICS},
                         "events_per_s_1pass": res["events_per_s"],
                         "speed_events": peers_speed[name]["events"],
                         "events_per_s": peers_speed[name]["events_per_s"] if variant != "defaults" else None})
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d"),
              "machine": machine(), "versions": versions(), "data": str(data), "repeat": a.repeat,
              "passes": a.passes, "wall_s": round(time.time() - t0, 1), "rows": rows}
    md = to_markdown(report)
    print(md)
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "compare.json").write_text(json.dumps(report, indent=2))
        (a.out / "compare.md").write_text(md)
        log(f"wrote {a.out / 'compare.json'} and {a.out / 'compare.md'}")
    return 0


def fmt(v, nd=4):
    if v is None:
        return ""
    if isinstance(v, float):
        return f"{v:,.0f}" if v > 1000 else f"{v:.{nd}f}"
    return str(v)


def to_markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        f"Command: `{r['command']}` ({r['date']}, {r['wall_s']} s)",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in r["versions"].items()),
        f"Data: MovieLens 100K u.data, timestamp order, one prequential pass for accuracy; speed: median of "
        f"{r['repeat']} runs over {r['passes']} passes ({r['passes']} x 100,000 events).",
        "",
        "| system | config | " + " | ".join(METRICS) + " | events/s (1 pass) | events/s (median, long run) |",
        "|" + "---|" * (len(METRICS) + 4),
    ]
    for row in r["rows"]:
        lines.append(f"| {row['system']} | {row['config']} | " + " | ".join(fmt(row.get(k)) for k in METRICS)
                     + f" | {fmt(row['events_per_s_1pass'])} | {fmt(row.get('events_per_s'))} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
