"""Million-item catalogs (issue #9): speed, memory and HR@10 of the ranking models against
the size of the catalog.

The streams are generated with the large-catalog shape (``recsys_stream.generate``,
``shape="zipf"``: Zipf popularity over the whole catalog, taste clusters, sequential
moves), the same events, users and seed at every catalog size, so only the catalog
changes. Every (model, size) is one prequential backtest (one pass, the real dataflow, no
popularity baseline) in a process of its own, run ``--repeat`` times with the models and
sizes interleaved; per run it records events/s (first event into the flow to the last
metric update), HR@10, the generation and replay times and the peak RSS of the process
(``ru_maxrss`` from ``wait4``). A generation-only process per size (``stream``) gives the
memory of the interpreter, the libraries and the stream (and the generation time without
the JIT cache's loading, which a backtest's generation time includes), so a model's own
memory is its peak above that. A run is killed above ``--max-rss-gb`` (or ``--timeout`` seconds) and
recorded as such.

A run goes through ``recsys-stream backtest --gen-shape zipf ...`` when the CLI has the
``--gen-shape``, ``--gen-groups`` and ``--gen-zipf`` flags, else through the library
(``recsys_stream.backtest.backtest``, with the generator's shape set in the child
process); ``--via`` forces one. Writes ``catalog_scale.json`` (and, with matplotlib,
``catalog_scale.png``: events/s and peak RSS against catalog size) to ``--out``, and a
Markdown table to stdout; progress on stderr.

    python benchmarks/catalog_scale.py --out benchmarks/results            # 10^4, 10^5, 10^6 items x 4 models
    python benchmarks/catalog_scale.py --sizes 10000,30000 --events 50000 --models pop --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from backtest_vs_peers import machine, versions  # noqa: E402

MODELS = ["itemknn", "implicit", "hybrid", "pop"]
CLI_FLAGS = ("--gen-shape", "--gen-groups", "--gen-zipf")
METRICS = ("hr@10", "mrr@10", "ndcg@10")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the child process (library path) ------------------------------------------------


def child(spec: dict) -> int:
    """One run in this process: ``spec["model"]`` is a model (a backtest through the
    library) or ``"stream"`` (generation only). Prints one JSON line."""
    import functools
    import resource

    sys.path.insert(0, str(ROOT))
    import recsys_stream.backtest as bt
    from recsys_stream.generate import GeneratorSettings, generate

    gen = {"shape": "zipf", "groups": spec["groups"], "zipf": spec["zipf"]}
    if spec["model"] == "stream":
        generate(GeneratorSettings(events=10, users=2, items=10, groups=2, shape="zipf"))  # the JIT cache, untimed
        t0 = time.perf_counter()
        b = generate(GeneratorSettings(events=spec["events"], users=spec["users"], items=spec["items"],
                                       seed=spec["seed"], **gen))
        out = {"model": "stream", "events": len(b), "load_s": round(time.perf_counter() - t0, 4),
               "items_seen": len(set(b.item.tolist()))}
    else:
        # the backtest generates through the name ``GeneratorSettings`` of its module
        bt.GeneratorSettings = functools.partial(GeneratorSettings, **gen)
        out = bt.backtest(model=spec["model"], gen_events=spec["events"], gen_users=spec["users"],
                          gen_items=spec["items"], seed=spec["seed"], quiet=True, show=0,
                          no_baseline=True).summary
    out["rss_self_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(out, default=str), flush=True)
    return 0


# -- the parent ---------------------------------------------------------------------


def cli_has_flags() -> bool:
    proc = subprocess.run([sys.executable, "-m", "recsys_stream.cli", "backtest", "--help"], capture_output=True,
                          text=True, cwd=ROOT)
    return proc.returncode == 0 and all(f in proc.stdout for f in CLI_FLAGS)


def command(spec: dict, via: str) -> list[str]:
    if via == "library" or spec["model"] == "stream":
        return [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    return [sys.executable, "-m", "recsys_stream.cli", "backtest", "--model", spec["model"],
            "--gen-events", str(spec["events"]), "--gen-users", str(spec["users"]),
            "--gen-items", str(spec["items"]), "--gen-shape", "zipf", "--gen-groups", str(spec["groups"]),
            "--gen-zipf", str(spec["zipf"]), "--seed", str(spec["seed"]), "--quiet", "--show", "0",
            "--no-baseline"]


def vm_rss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_one(spec: dict, via: str, max_rss_kib: int, timeout_s: float) -> dict:
    """One process: its last stdout line (JSON) with ``peak_rss_mib`` and ``wall_s``; or
    ``error`` when it failed or was killed."""
    return run_cmd(command(spec, via), max_rss_kib, timeout_s)


def run_cmd(cmd: list[str], max_rss_kib: int, timeout_s: float) -> dict:
    """``run_one`` of a command line."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT)
        killed = None
        polled = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            polled = max(polled, vm_rss_kib(proc.pid))
            if killed is None:
                if max_rss_kib and polled > max_rss_kib:
                    killed = f"killed: RSS above {max_rss_kib / 2**20:.1f} GiB"
                elif timeout_s and time.perf_counter() - t0 > timeout_s:
                    killed = f"killed: over {timeout_s:.0f} s"
                if killed:
                    os.kill(proc.pid, signal.SIGKILL)
            time.sleep(0.2)
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    res: dict = {"peak_rss_mib": round(max(usage.ru_maxrss, polled) / 1024, 1), "wall_s": round(wall, 2)}
    if killed or proc.returncode != 0:
        res["error"] = killed or f"exit {proc.returncode}: {stderr.strip()[-2000:]}"
        return res
    try:
        res.update(json.loads(stdout.strip().splitlines()[-1]))
    except (IndexError, ValueError):
        res["error"] = f"no JSON on stdout: {stdout[-500:]!r} {stderr[-1500:]!r}"
    return res


def median(xs: list):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(runs: list[dict], models: list[str], sizes: list[int]) -> list[dict]:
    rows = []
    stream = {n: median([r.get("peak_rss_mib") for r in runs if r["model"] == "stream" and r["items"] == n
                         and "error" not in r]) for n in sizes}
    for model in ["stream", *models]:
        for n in sizes:
            mine = [r for r in runs if r["model"] == model and r["items"] == n]
            ok = [r for r in mine if "error" not in r]
            row = {"model": model, "items": n, "runs": len(mine), "failed": len(mine) - len(ok),
                   "errors": sorted({r["error"][:200] for r in mine if "error" in r}),
                   "peak_rss_mib": median([r["peak_rss_mib"] for r in ok]),
                   "load_s": median([r.get("load_s") for r in ok])}
            if model != "stream":
                row.update({"events_per_s": median([r.get("events_per_s") for r in ok]),
                            "events_per_s_all": [r.get("events_per_s") for r in ok],
                            "flow_s": median([r.get("flow_s") for r in ok]),
                            **{m: median([r.get(m) for r in ok]) for m in METRICS}})
                if row["peak_rss_mib"] is not None and stream[n] is not None:
                    row["above_stream_mib"] = round(row["peak_rss_mib"] - stream[n], 1)
            else:
                row["items_seen"] = median([r.get("items_seen") for r in ok])
            rows.append(row)
    return rows


def fmt(v, spec: str = ",.0f") -> str:
    return "" if v is None else format(v, spec)


def to_markdown(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    lines = [f"Command: `{report['command']}` ({report['date']}, {report['wall_s']} s, via {s['via']})",
             f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; {m['os']}",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()),
             f"Stream: generated, shape zipf, {s['events']:,} events, {s['users']:,} users, {s['groups']} clusters, "
             f"zipf {s['zipf']}, seed {s['seed']}; one prequential pass; medians of {s['repeat']} run(s).", "",
             "| model | items | events/s | HR@10 | peak RSS (MiB) | above the stream (MiB) | generate (s) "
             "| replay (s) | runs |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        runs = f"{r['runs'] - r['failed']}/{r['runs']}" + (f" ({'; '.join(r['errors'])[:80]})" if r["failed"] else "")
        if r["model"] == "stream":
            lines.append(f"| stream only ({fmt(r.get('items_seen'))} items occur) | {r['items']:,} | | | "
                         f"{fmt(r['peak_rss_mib'])} | | {fmt(r['load_s'], '.2f')} | | {runs} |")
        else:
            lines.append(f"| {r['model']} | {r['items']:,} | {fmt(r['events_per_s'])} | {fmt(r['hr@10'], '.4f')} | "
                         f"{fmt(r['peak_rss_mib'])} | {fmt(r.get('above_stream_mib'))} | {fmt(r['load_s'], '.2f')} | "
                         f"{fmt(r['flow_s'], '.1f')} | {runs} |")
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> bool:
    try:
        import matplotlib
    except ImportError:
        return False
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    fig, (ax_speed, ax_mem) = plt.subplots(1, 2, figsize=(10, 3.8))
    for model in dict.fromkeys(r["model"] for r in rows):
        pts = [r for r in rows if r["model"] == model]
        if model != "stream":
            sp = [(r["items"], r["events_per_s"]) for r in pts if r["events_per_s"]]
            if sp:
                ax_speed.plot(*zip(*sp), "o-", label=model)
        mem = [(r["items"], r["peak_rss_mib"]) for r in pts if r["peak_rss_mib"] and not r["failed"]]
        if mem:
            ax_mem.plot(*zip(*mem), "k--" if model == "stream" else "o-",
                        label="stream only" if model == "stream" else model)
    for ax, label in ((ax_speed, "events/s (one prequential pass)"), (ax_mem, "peak RSS (MiB)")):
        ax.set_xscale("log")
        ax.set_xlabel("catalog size (items)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    ax_speed.set_yscale("log")
    s = report["settings"]
    fig.suptitle(f"Generated zipf stream: {s['events']:,} events, {s['users']:,} users, {s['groups']} clusters, "
                 f"zipf {s['zipf']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="10000,100000,1000000", help="catalog sizes (items), comma-separated")
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--users", type=int, default=0, help="users (default: events / 20)")
    ap.add_argument("--groups", type=int, default=20, help="taste clusters")
    ap.add_argument("--zipf", type=float, default=1.1, help="popularity exponent")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeat", type=int, default=1, help="runs per (model, size); medians")
    ap.add_argument("--via", choices=("auto", "cli", "library"), default="auto")
    ap.add_argument("--max-rss-gb", type=float, default=0.0, help="kill a run above this RSS (default: 80%% of RAM)")
    ap.add_argument("--timeout", type=float, default=0.0, help="kill a run after S seconds (0: never)")
    ap.add_argument("--out", type=Path, default=HERE / "results")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        return child(json.loads(a.child))
    sizes = [int(x) for x in a.sizes.split(",")]
    models = a.models.split(",")
    users = a.users or max(1, a.events // 20)
    via = a.via if a.via != "auto" else ("cli" if cli_has_flags() else "library")
    if via == "cli" and not cli_has_flags():
        print(f"catalog_scale: error: the CLI lacks {', '.join(CLI_FLAGS)}; use --via library", file=sys.stderr)
        return 2
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    max_rss_kib = int((a.max_rss_gb * 2**30 if a.max_rss_gb else 0.8 * mem) / 1024)
    t0 = time.time()
    runs: list[dict] = []
    total = a.repeat * len(sizes) * (len(models) + 1)
    for rep in range(a.repeat):
        for n in sizes:
            for model in ["stream", *models]:
                spec = {"model": model, "events": a.events, "users": users, "items": n, "groups": a.groups,
                        "zipf": a.zipf, "seed": a.seed}
                r = {**run_one(spec, via, max_rss_kib, a.timeout), "model": model, "items": n, "repeat": rep}
                runs.append(r)
                what = (f"{fmt(r.get('events_per_s'))} events/s, HR@10 {fmt(r.get('hr@10'), '.4f')}"
                        if model != "stream" else f"generated in {fmt(r.get('load_s'), '.2f')} s")
                log(f"catalog_scale: [{len(runs)}/{total}] {model} items={n:,} repeat {rep + 1}/{a.repeat}: "
                    + (r["error"][:300] if "error" in r else what)
                    + f", peak RSS {r['peak_rss_mib']:,.0f} MiB (wall {r['wall_s']:.1f} s)")
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d"),
              "machine": machine(), "versions": versions(),
              "settings": {"sizes": sizes, "events": a.events, "users": users, "groups": a.groups, "zipf": a.zipf,
                           "seed": a.seed, "models": models, "repeat": a.repeat, "via": via,
                           "max_rss_gib": round(max_rss_kib / 2**20, 1), "timeout_s": a.timeout},
              "wall_s": round(time.time() - t0, 1)}
    report["rows"] = summarize(runs, models, sizes)
    report["runs"] = runs
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "catalog_scale.json").write_text(json.dumps(report, indent=1, default=str))
    log(f"catalog_scale: wrote {a.out / 'catalog_scale.json'}")
    if plot(report, a.out / "catalog_scale.png"):
        log(f"catalog_scale: wrote {a.out / 'catalog_scale.png'}")
    print(to_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
