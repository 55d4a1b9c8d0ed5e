"""Checkpoint costs: write time against rows changed, restore time against state size,
bytes on disk per user, and the throughput cost of checkpointing every second.

1. Build a shard of ``--users`` users (MF, ``--dim`` factors; one rating each, so every
   user has a factor row, a bias and a history), write a full generation, then, for
   each size in ``--changed``, change that many users' rows and time the next
   generation (median of ``--repeat``).
2. Restore: time a restore (items, globals, emission state; users are lazy) and the
   reload of every user from the store (what an eager restore would cost), at several
   state sizes.
3. Bytes on disk per user: the LMDB pages in use after the full generation / users.
4. Throughput: ``recsys-stream run`` on the embedded stream (``--events``, as fast as it
   goes) with ``--checkpoint-interval 1`` and without checkpoints, median events/s of
   ``--repeat`` runs each, alternating.

    python benchmarks/checkpoint_bench.py --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from recsys_stream.checkpoint import Checkpointer  # noqa: E402
from recsys_stream.events import EventBatch  # noqa: E402
from recsys_stream.models import model_params  # noqa: E402
from recsys_stream.shard import Shard, ShardSettings  # noqa: E402
from recsys_stream.storage import USERS, Store  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def build(users: int, dim: int, path: str) -> tuple[Shard, Store, float]:
    st = Store(path, map_size=64 << 30)
    sh = Shard(0, ShardSettings(model="mf", params=model_params("mf", dim=dim), evaluate=False))
    sh.checkpointer = Checkpointer(sh, st)
    rng = np.random.default_rng(0)
    step = 200_000
    t = 1.7e9
    for a in range(0, users, step):
        n = min(step, users - a)
        ids = [f"user-{j}" for j in range(a, a + n)]
        items = [f"item-{x}" for x in rng.integers(0, 5000, n)]
        b = EventBatch.from_columns(ids, items, t + np.arange(n), np.zeros(n), rng.integers(1, 6, n),
                                    np.arange(a, a + n), np.full(n, -1), np.arange(a, a + n))
        sh.process(b)
        log(f"  built {a + n:,}/{users:,} users")
    t0 = time.perf_counter()
    sh.checkpointer.snapshot(sh.filter.snapshot())
    return sh, st, time.perf_counter() - t0


def write_costs(sh: Shard, changed: list[int], repeat: int) -> list[dict]:
    out = []
    n = sh.users.ids.live()
    rng = np.random.default_rng(1)
    for k in changed:
        k = min(k, n)
        times = []
        for _ in range(repeat):
            rows = rng.choice(n, k, replace=False)
            sh.users.arrays["mf.P"][rows] += 0.001  # a change to k users' factors
            sh.users.arrays["dirty"][rows] = 1
            t0 = time.perf_counter()
            sh.checkpointer.snapshot(sh.filter.snapshot())
            times.append(time.perf_counter() - t0)
        out.append({"rows_changed": k, "median_s": round(statistics.median(times), 4),
                    "per_row_us": round(1e6 * statistics.median(times) / max(k, 1), 2)})
        log(f"  checkpoint of {k:,} changed users: {out[-1]['median_s']} s")
    return out


def restore_costs(st: Store, dim: int, users: int) -> dict:
    sh = Shard(0, ShardSettings(model="mf", params=model_params("mf", dim=dim), evaluate=False))
    sh.checkpointer = Checkpointer(sh, st)
    gen = st.head(0)
    t0 = time.perf_counter()
    sh.filter.restore(sh.checkpointer.restore(gen))
    lazy = time.perf_counter() - t0
    t0 = time.perf_counter()
    ids = [entity.decode() for entity, _g, _p in st.scan(0, USERS, gen, verify=False)]
    n = len(sh.checkpointer.load_users(ids))
    eager = time.perf_counter() - t0
    assert n == users
    return {"users": users, "restore_s": round(lazy, 3), "reload_all_users_s": round(eager, 3),
            "reload_per_user_us": round(1e6 * eager / users, 2)}


def disk_per_user(st: Store, users: int) -> float:
    env = st.kv.env  # the LMDB environment (an LMDB store)
    used = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    return used / users


def throughput(events: int, repeat: int, model: str) -> dict:
    res: dict = {"with_checkpoint_1s": [], "without": []}
    for r in range(repeat):
        for label in ("without", "with_checkpoint_1s"):
            cmd = [sys.executable, "-m", "recsys_stream.cli", "run", "--events", str(events), "--rate", "0",
                   "--model", model, "--refresh-interval", "1"]
            tmp = None
            if label != "without":
                tmp = tempfile.mkdtemp(prefix="ckbench-")
                cmd += ["--checkpoint-dir", tmp, "--checkpoint-interval", "1"]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=True)
            summary = json.loads(proc.stdout.strip().splitlines()[-1])
            res[label].append(summary["events_per_s"])
            if tmp:
                shutil.rmtree(tmp)
            log(f"  run {r + 1}/{repeat} {label}: {summary['events_per_s']:,.0f} events/s")
    med = {k: statistics.median(v) for k, v in res.items()}
    return {"model": model, "events": events, "runs": res, "median_events_per_s": med,
            "cost_pct": round(100 * (1 - med["with_checkpoint_1s"] / med["without"]), 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--changed", default="1000,10000,100000,1000000")
    ap.add_argument("--sizes", default="100000,1000000", help="state sizes (users) for the restore timing")
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--model", default="itemknn", help="model of the throughput runs")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    report = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d"),
              "dim": a.dim}
    tmp = Path(tempfile.mkdtemp(prefix="ckbench-"))
    try:
        log(f"building {a.users:,} users x {a.dim} factors")
        sh, st, full_s = build(a.users, a.dim, str(tmp / "big"))
        report["full_generation_s"] = round(full_s, 3)
        report["bytes_per_user"] = round(disk_per_user(st, a.users), 1)
        report["write"] = write_costs(sh, [int(x) for x in a.changed.split(",")], a.repeat)
        report["restore"] = []
        for size in [int(x) for x in a.sizes.split(",")]:
            if size == a.users:
                report["restore"].append(restore_costs(st, a.dim, size))
            else:
                _sh, st2, _ = build(size, a.dim, str(tmp / f"s{size}"))
                report["restore"].append(restore_costs(st2, a.dim, size))
                st2.close()
            log(f"  restore {report['restore'][-1]}")
        st.close()
    finally:
        shutil.rmtree(tmp)
    report["throughput"] = throughput(a.events, a.repeat, a.model)
    print(json.dumps(report))
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "checkpoint_bench.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
