"""Shared item state (issue #8), in one process: quality against the number of user key
groups (``--shards``) and workers, and speed of 2 workers against 1 and of 8 shards
against 1.

Quality: one prequential pass of MovieLens 100K per (model, shards, workers) through
``recsys-stream backtest`` (the real dataflow). With shared item state the shard count
must no longer matter: 1 worker is deterministic for any shard count; 2 workers read a
replica that lags the other worker's writes by about one batch (the staleness is
reported: the age of the remote item updates when applied, p50/p99).

Speed: ``--passes 10`` (1,000,000 events) itemknn with 1 and 2 workers, and 1 worker with
1 and 8 shards; the configurations alternate within each repeat so that each ratio is
taken from runs made side by side; medians over ``--repeat``.

    python benchmarks/scaleout.py --out benchmarks/results          # quality, speed, plot
    python benchmarks/scaleout.py --skip-speed --models itemknn,mf  # quality only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_DATA = (ROOT / ".." / "shared" / "datasets" / "ml-100k").resolve()
METRIC = {"mf": "rmse", "itemknn": "hr@10", "implicit": "hr@10", "hybrid": "hr@10", "pop": "hr@10"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def backtest(data: Path | None, model: str, shards: int, workers: int, passes: int = 1, root: Path = ROOT,
             gen: tuple | None = None) -> dict:
    """One ``recsys-stream backtest`` of the checkout at ``root``; ``gen``: (events, users,
    items) of a generated stream instead of ``data``."""
    src = [str(data / "u.data")] if gen is None else \
        ["--gen-events", str(gen[0]), "--gen-users", str(gen[1]), "--gen-items", str(gen[2])]
    cmd = [sys.executable, "-m", "recsys_stream.cli", "backtest", *src, "--model", model,
           "--shards", str(shards), "--workers", str(workers), "--passes", str(passes), "--quiet"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=root)
    if proc.returncode != 0:
        raise SystemExit(f"scaleout: {' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    return out


def quality(data: Path, models: list[str], shard_counts: list[int], worker_counts: list[int],
            root: Path = ROOT, label: str = "shared item state") -> list[dict]:
    rows = []
    total = len(models) * len(shard_counts) * len(worker_counts)
    for model in models:
        for workers in worker_counts:
            for shards in shard_counts:
                r = backtest(data, model, shards, workers, root=root)
                key = METRIC[model]
                rows.append({"design": label, "model": model, "shards": shards, "workers": workers, "metric": key,
                             "value": r[key], "events_per_s": r.get("events_per_s"),
                             "item_staleness_ms": r.get("item_staleness_ms")})
                log(f"scaleout: {label} [{len(rows)}/{total}] {model} shards={shards} workers={workers}: "
                    f"{key} {r[key]:.4f}, staleness {r.get('item_staleness_ms')}")
    return rows


SHAPES = {"gen 40k x 2k users x 500 items": (40_000, 2_000, 500),
          "gen 60k x 6k users x 3k items": (60_000, 6_000, 3_000)}


def generated(models: list[str]) -> list[dict]:
    """Streams of other shapes than ML-100K (never tuned on): one shard against 8 shards with
    1 and 2 workers, the relative difference of each metric."""
    rows = []
    for shape, gen in SHAPES.items():
        for model in models:
            key = METRIC[model]
            ref = backtest(None, model, 1, 1, gen=gen)[key]
            for shards, workers in ((8, 1), (8, 2)):
                v = backtest(None, model, shards, workers, gen=gen)[key]
                rel = (v - ref) / ref
                rows.append({"stream": shape, "model": model, "metric": key, "one_shard": ref, "shards": shards,
                             "workers": workers, "value": v, "relative": round(rel, 4)})
                log(f"scaleout: {shape} {model} {key}: 1 shard {ref:.4f}, {shards} shards x {workers} worker(s) "
                    f"{v:.4f} ({100 * rel:+.2f}%)")
    return rows


def speed(data: Path, repeat: int, passes: int) -> dict:
    configs = {"1 worker, 1 shard": (1, 1), "1 worker, 8 shards": (8, 1), "2 workers, 8 shards": (8, 2)}
    runs: dict = {name: [] for name in configs}
    for rep in range(repeat):
        for name, (shards, workers) in configs.items():
            r = backtest(data, "itemknn", shards, workers, passes)
            runs[name].append(r["events_per_s"])
            log(f"scaleout: speed repeat {rep + 1}/{repeat} {name}: {r['events_per_s']:,.0f} events/s")
    med = {name: statistics.median(v) for name, v in runs.items()}
    ratios = {
        "2 workers / 1 worker (8 shards)": [b / a for a, b in zip(runs["1 worker, 8 shards"], runs["2 workers, 8 shards"])],
        "8 shards / 1 shard (1 worker)": [b / a for a, b in zip(runs["1 worker, 1 shard"], runs["1 worker, 8 shards"])],
    }
    return {"model": "itemknn", "events": passes * 100_000, "runs": runs, "median_events_per_s": med,
            "ratios": {k: {"per_repeat": [round(x, 3) for x in v], "median": round(statistics.median(v), 3)}
                       for k, v in ratios.items()}}


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = sorted({r["model"] for r in rows}, key=list(METRIC).index)
    fig, axes = plt.subplots(1, len(models), figsize=(4 * len(models), 3.6), squeeze=False)
    designs = list(dict.fromkeys(r["design"] for r in rows))
    colors = {d: c for d, c in zip(designs, ("tab:blue", "tab:red", "tab:green"))}
    for ax, model in zip(axes[0], models):
        for design in designs:
            for workers, style in ((1, "o-"), (2, "s--")):
                pts = sorted((r["shards"], r["value"]) for r in rows
                             if r["model"] == model and r["workers"] == workers and r["design"] == design)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=colors[design],
                            alpha=1.0 if workers == 1 else 0.75, label=f"{design}, {workers} worker(s)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("user key groups (--shards)")
        ax.set_ylabel(METRIC[model].upper() if METRIC[model] == "rmse" else METRIC[model].replace("hr", "HR"))
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.suptitle("ML-100K, one prequential pass: quality against the number of user key groups", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with MovieLens 100K u.data")
    ap.add_argument("--models", default="itemknn,mf,implicit,hybrid")
    ap.add_argument("--shards", default="1,2,4,8,16")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--repeat", type=int, default=3, help="speed repeats (medians)")
    ap.add_argument("--passes", type=int, default=10, help="passes of ML-100K for speed")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-generated", action="store_true")
    ap.add_argument("--baseline", type=Path, help="a checkout of an earlier design, run beside (e.g. a git worktree "
                    "of the commit before shared item state)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    if not (a.data / "u.data").exists():
        print(f"scaleout: error: {a.data / 'u.data'} not found (MovieLens 100K; --data)", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d")}
    if not a.skip_quality:
        grid = (a.models.split(","), [int(x) for x in a.shards.split(",")], [int(x) for x in a.workers.split(",")])
        rows = quality(a.data, *grid)
        if a.baseline:
            rows += quality(a.data, *grid, root=a.baseline.resolve(), label="per-shard item copies (before)")
        result["quality"] = rows
        plot(rows, a.out / "scaleout_quality.png")
        log(f"scaleout: plot {a.out / 'scaleout_quality.png'}")
    if not a.skip_generated and not a.skip_quality:
        result["generated"] = generated(a.models.split(","))
    if not a.skip_speed:
        result["speed"] = speed(a.data, a.repeat, a.passes)
        log(f"scaleout: ratios {json.dumps({k: v['median'] for k, v in result['speed']['ratios'].items()})}")
    name = "scaleout.json" if not a.skip_quality and not a.skip_speed else \
        ("scaleout_quality.json" if a.skip_speed else "scaleout_speed.json")
    (a.out / name).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
