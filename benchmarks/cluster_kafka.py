"""A cluster of processes through the real broker (issue #8): sustained events/s and
prequential metrics of 2 processes against 1, and quality against the item-sync interval.

Throughput: MovieLens 100K replayed ``--passes`` times (event ids and times made unique
per pass, as in e2e_kafka.py) is produced into a topic of ``--partitions`` partitions
first; then each configuration drains it (``recsys-stream run --exit-at-end
--evaluate``) into a fresh output topic: 1 process x 1 worker, 1 process x 2 workers,
2 processes x 1 worker (``--process-id``/``--addresses`` on 127.0.0.1; the item side
shared through ``<output>.item-sync``). Events/s = events over the time from the first
to the last result reaching the metrics sink (one worker of the cluster holds it). The
configurations alternate within each repeat; ratios are per repeat, medians reported.
The broker runs on the same 2 cores as the workers.

Staleness: 2 processes x 1 worker over one pass, the input throttled to ``--rate``
events/s in all (``--max-rate`` per partition), for each ``--sync-interval``: the owners
of one process publish their changed item rows to the other every interval, so a
replica's view of the other process's item rows is that old. HR@10 (itemknn) and RMSE
(mf) against the interval, and the measured age of the remote item updates (p50/p99).

    scripts/kafka-dev.sh start
    python benchmarks/cluster_kafka.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

from confluent_kafka.admin import AdminClient, NewTopic

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from e2e_kafka import messages, produce  # noqa: E402

from recsys_stream.io.readers import read_events  # noqa: E402

DEFAULT_DATA = (ROOT / ".." / "shared" / "datasets" / "ml-100k").resolve()
METRIC = {"itemknn": "hr@10", "mf": "rmse", "implicit": "hr@10", "hybrid": "hr@10"}


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def topic(boot: str, prefix: str, partitions: int) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    a = AdminClient({"bootstrap.servers": boot})
    for _t, f in a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).items():
        f.result(30)
    return name


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def run(boot: str, inp: str, model: str, processes: int, workers: int, extra: list[str]) -> dict:
    out = f"bench-out-{uuid.uuid4().hex[:8]}"
    base = [sys.executable, "-m", "recsys_stream.cli", "run", "--brokers", boot, "--input-topic", inp,
            "--output-topic", out, "--dead-letter-topic", out + "-dead", "--model", model, "--workers", str(workers),
            "--refresh-interval", "0", "--exit-at-end", "--evaluate", *extra]
    cmds = [base]
    if processes > 1:
        addr = ";".join(f"127.0.0.1:{p}" for p in free_ports(processes))
        cmds = [[*base, "--process-id", str(p), "--addresses", addr] for p in range(processes)]
    t0 = time.perf_counter()
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate(timeout=1800) for p in procs]
    wall = time.perf_counter() - t0
    summary = None
    for p, (stdout, stderr) in zip(procs, outs):
        if p.returncode != 0:
            raise SystemExit(f"cluster_kafka: a process failed ({p.returncode}):\n{stderr[-3000:]}")
        for line in stdout.strip().splitlines():
            if line.startswith("{") and '"events"' in line:
                summary = json.loads(line)
    if summary is None:
        raise SystemExit("cluster_kafka: no process printed the prequential summary")
    summary["wall_s"] = round(wall, 2)
    return summary


def throughput(boot: str, inp: str, n_events: int, model: str, repeat: int) -> dict:
    configs = {"1 process x 1 worker": (1, 1), "1 process x 2 workers": (1, 2), "2 processes x 1 worker": (2, 1)}
    runs: dict = {name: [] for name in configs}
    for rep in range(repeat):
        for name, (p, w) in configs.items():
            s = run(boot, inp, model, p, w, [])
            assert s["events"] == n_events, (name, s["events"], n_events)
            runs[name].append({"events_per_s": s["events_per_s"], METRIC[model]: s[METRIC[model]],
                               "wall_s": s["wall_s"], "item_staleness_ms": s.get("item_staleness_ms")})
            log(f"cluster_kafka: repeat {rep + 1}/{repeat} {name}: {s['events_per_s']:,.0f} events/s, "
                f"{METRIC[model]} {s[METRIC[model]]:.4f}")
    one = runs["1 process x 1 worker"]
    ratios = {name: [r["events_per_s"] / o["events_per_s"] for r, o in zip(v, one)] for name, v in runs.items()
              if name != "1 process x 1 worker"}
    return {"model": model, "events": n_events, "runs": runs,
            "median_events_per_s": {k: statistics.median(r["events_per_s"] for r in v) for k, v in runs.items()},
            "metric": {k: statistics.median(r[METRIC[model]] for r in v) for k, v in runs.items()},
            "ratio_vs_1x1": {k: {"per_repeat": [round(x, 3) for x in v], "median": round(statistics.median(v), 3)}
                             for k, v in ratios.items()}}


def staleness(boot: str, inp: str, models: list[str], intervals: list[float], rate: float, partitions: int) -> list:
    rows = []
    for model in models:
        ref = run(boot, inp, model, 1, 1, ["--max-rate", str(rate / partitions)])
        rows.append({"model": model, "sync_interval_s": None, "processes": 1, "metric": METRIC[model],
                     "value": ref[METRIC[model]], "events_per_s": ref.get("events_per_s")})
        log(f"cluster_kafka: {model} 1 process: {METRIC[model]} {ref[METRIC[model]]:.4f}")
        for iv in intervals:
            s = run(boot, inp, model, 2, 1, ["--max-rate", str(rate / partitions), "--sync-interval", str(iv)])
            rows.append({"model": model, "sync_interval_s": iv, "processes": 2, "metric": METRIC[model],
                         "value": s[METRIC[model]], "item_staleness_ms": s.get("item_staleness_ms"),
                         "events_per_s": s.get("events_per_s")})
            log(f"cluster_kafka: {model} 2 processes, sync {iv} s: {METRIC[model]} {s[METRIC[model]]:.4f}, "
                f"staleness {s.get('item_staleness_ms')}")
    return rows


def plot(rows: list, rate: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, axes = plt.subplots(1, len(models), figsize=(4.5 * len(models), 3.4), squeeze=False)
    for ax, model in zip(axes[0], models):
        pts = sorted((r["sync_interval_s"], r["value"]) for r in rows if r["model"] == model and r["processes"] == 2)
        ref = [r["value"] for r in rows if r["model"] == model and r["processes"] == 1]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label="2 processes")
        if ref:
            ax.axhline(ref[0], color="gray", ls="--", label="1 process")
        ax.set_xscale("log")
        ax.set_xlabel("--sync-interval (s)")
        ax.set_ylabel("RMSE" if METRIC[model] == "rmse" else "HR@10")
        ax.set_title(model)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"ML-100K through the broker at {rate:,.0f} events/s: quality against item-sync staleness",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with MovieLens 100K u.data")
    ap.add_argument("--model", default="itemknn", help="model of the throughput runs")
    ap.add_argument("--passes", type=int, default=3, help="ML-100K passes for throughput")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--sync-intervals", default="0.05,0.25,1,4,16")
    ap.add_argument("--staleness-models", default="itemknn,mf")
    ap.add_argument("--rate", type=float, default=8000.0, help="events/s in all for the staleness runs")
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-staleness", action="store_true")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    if not (a.data / "u.data").exists():
        print(f"cluster_kafka: error: {a.data / 'u.data'} not found (MovieLens 100K; --data)", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    events = read_events(str(a.data / "u.data")).events
    result: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"),
                    "partitions": a.partitions}
    if not a.skip_throughput:
        inp = topic(a.brokers, "bench-cluster", a.partitions)
        n = produce(a.brokers, inp, messages(events, a.passes))
        log(f"cluster_kafka: {n:,} events in {inp}")
        result["throughput"] = throughput(a.brokers, inp, n, a.model, a.repeat)
        log(f"cluster_kafka: ratios {json.dumps({k: v['median'] for k, v in result['throughput']['ratio_vs_1x1'].items()})}")
    if not a.skip_staleness:
        inp = topic(a.brokers, "bench-stale", a.partitions)
        n = produce(a.brokers, inp, messages(events, 1))
        rows = staleness(a.brokers, inp, a.staleness_models.split(","), [float(x) for x in a.sync_intervals.split(",")],
                         a.rate, a.partitions)
        result["staleness"] = {"rate": a.rate, "events": n, "rows": rows}
        plot(rows, a.rate, a.out / "cluster_staleness.png")
    name = {(False, False): "cluster_kafka.json", (True, False): "cluster_staleness.json",
            (False, True): "cluster_throughput.json"}[(a.skip_throughput, a.skip_staleness)]
    (a.out / name).write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
