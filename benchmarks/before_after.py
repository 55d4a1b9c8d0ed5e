"""Before and after a change of design (issue #7: "nothing gets slower"): every model's
ML-100K figures from two checkouts, run alternately in one session so that both see the
same machine.

Quality: one prequential pass (`recsys-stream backtest u.data --model M`). Speed:
``--passes 10`` (1,000,000 events), events/s from the first event into the flow to the
last metric update, medians over ``--repeat``; the ratio after/before per repeat.

    git worktree add /tmp/before <commit>
    python benchmarks/before_after.py --before /tmp/before --repeat 3 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = (ROOT / ".." / "shared" / "datasets" / "ml-100k").resolve()
MODELS = ["mf", "ftrl", "pop", "itemknn", "implicit", "hybrid"]
METRICS = {"mf": ["rmse"], "ftrl": ["logloss", "auc"], "pop": ["hr@10"], "itemknn": ["hr@10"],
           "implicit": ["hr@10"], "hybrid": ["hr@10"]}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def backtest(root: Path, data: Path, model: str, passes: int) -> dict:
    cmd = [sys.executable, "-m", "recsys_stream.cli", "backtest", str(data / "u.data"), "--model", model,
           "--passes", str(passes), "--quiet"]
    if model == "ftrl":
        cmd += ["--user-features", str(data / "u.user"), "--item-features", str(data / "u.item")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root, env=dict(os.environ, PYTHONPATH=str(root)))
    if proc.returncode != 0:
        raise SystemExit(f"before_after: {' '.join(cmd)} in {root} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", type=Path, required=True, help="a checkout of the code before")
    ap.add_argument("--after", type=Path, default=ROOT, help="a checkout of the code after (default: this one)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with MovieLens 100K")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--passes", type=int, default=10)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    if not (a.data / "u.data").exists():
        print(f"before_after: error: {a.data / 'u.data'} not found (MovieLens 100K; --data)", file=sys.stderr)
        return 2
    sides = {"before": a.before.resolve(), "after": a.after.resolve()}
    out: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"),
                 "models": {}}
    for model in a.models.split(","):
        row: dict = {}
        for side, root in sides.items():
            r = backtest(root, a.data, model, 1)
            row[side] = {"metrics": {k: r.get(k) for k in METRICS[model]}, "events_per_s": []}
        for rep in range(a.repeat):
            for side, root in sides.items():
                row[side]["events_per_s"].append(backtest(root, a.data, model, a.passes)["events_per_s"])
            log(f"before_after: {model} repeat {rep + 1}/{a.repeat}: before {row['before']['events_per_s'][-1]:,.0f}, "
                f"after {row['after']['events_per_s'][-1]:,.0f} events/s")
        ratios = [x / y for x, y in zip(row["after"]["events_per_s"], row["before"]["events_per_s"])]
        row["ratio"] = {"per_repeat": [round(x, 3) for x in ratios], "median": round(statistics.median(ratios), 3)}
        for side in sides:
            row[side]["median_events_per_s"] = statistics.median(row[side]["events_per_s"])
        out["models"][model] = row
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "before_after.json").write_text(json.dumps(out, indent=1))
    print("| model | metric before | metric after | events/s before | events/s after | after / before (per repeat) |")
    print("|---|---|---|---|---|---|")
    for model, row in out["models"].items():
        mb = ", ".join(f"{k} {v:.4f}" for k, v in row["before"]["metrics"].items() if v is not None)
        ma = ", ".join(f"{k} {v:.4f}" for k, v in row["after"]["metrics"].items() if v is not None)
        print(f"| {model} | {mb} | {ma} | {row['before']['median_events_per_s']:,.0f} | "
              f"{row['after']['median_events_per_s']:,.0f} | {row['ratio']['median']:.2f} "
              f"({', '.join(f'{x:.2f}' for x in row['ratio']['per_repeat'])}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
