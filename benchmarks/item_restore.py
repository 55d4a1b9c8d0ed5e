"""Checkpoints of a large item side (issue #9): write and restore times of a 10^6-item
state, bytes per item on disk and in memory, and the retrieval index rebuilt after the
restore.

1. Build an ``implicit`` shard whose stream names ``--items`` distinct items (one event
   each, ``--users`` users in turn; no evaluation, exact scan while building), and write a
   full generation to a new LMDB store.
2. Restore it into a fresh shard (items, globals, emission state; users come back
   lazily, on their next event) with the index on (``ann=auto``), and time the first
   learned event after it: the index is built there from the restored rows (k-means,
   lists, probe tuning).
3. Bytes: the LMDB files' allocated blocks / items (users and history included); the item arrays' bytes per row in memory; the
   index's bytes per item.

    python benchmarks/item_restore.py --out benchmarks/results
    python benchmarks/item_restore.py --items 100000 --users 10000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from backtest_vs_peers import machine, versions  # noqa: E402
from recsys_stream.checkpoint import Checkpointer  # noqa: E402
from recsys_stream.events import EventBatch  # noqa: E402
from recsys_stream.models import model_params  # noqa: E402
from recsys_stream.shard import Shard, ShardSettings  # noqa: E402
from recsys_stream.storage import Store  # noqa: E402


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def shard(ann: str) -> Shard:
    return Shard(0, ShardSettings(model="implicit", params=model_params("implicit", ann=ann), evaluate=False))


def batch(a: int, n: int, users: int) -> EventBatch:
    ids = [f"user-{j % users}" for j in range(a, a + n)]
    items = [f"item-{j}" for j in range(a, a + n)]
    t = 1.7e9 + np.arange(a, a + n, dtype=np.float64)
    return EventBatch.from_columns(ids, items, t, np.zeros(n), np.ones(n), np.arange(a, a + n), np.full(n, -1),
                                   np.arange(a, a + n))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--items", type=int, default=1_000_000)
    ap.add_argument("--users", type=int, default=25_000)
    ap.add_argument("--out", default=None, help="write item_restore.json here")
    a = ap.parse_args(argv)
    tmp = tempfile.mkdtemp(prefix="item-restore-")
    try:
        st = Store(f"{tmp}/state.lmdb", map_size=64 << 30)
        sh = shard("off")
        sh.checkpointer = Checkpointer(sh, st)
        t0 = time.perf_counter()
        step = 100_000
        for s in range(0, a.items, step):
            sh.process(batch(s, min(step, a.items - s), a.users))
            log(f"item_restore: built {min(s + step, a.items):,}/{a.items:,} items")
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        gen = sh.checkpointer.snapshot(sh.filter.snapshot())
        write_s = time.perf_counter() - t0
        disk = sum(f.stat().st_blocks * 512 for f in Path(f"{tmp}/state.lmdb").rglob("*") if f.is_file())
        items = sh.items
        n = len(items)
        row_bytes = sum(items.arrays[s.name].nbytes // max(1, items.arrays.cap)
                        for s in items.arrays.specs.values() if s.kind == "row")
        log(f"item_restore: wrote generation {gen} in {write_s:.1f} s, {disk / 2**20:,.0f} MiB on disk")
        del sh

        back = shard("auto")
        back.checkpointer = Checkpointer(back, st)
        t0 = time.perf_counter()
        back.filter.restore(back.checkpointer.restore(gen))
        restore_s = time.perf_counter() - t0
        assert len(back.items) == n, (len(back.items), n)
        log(f"item_restore: restored {n:,} items in {restore_s:.1f} s")
        t0 = time.perf_counter()
        back.process(batch(a.items, 1, a.users))  # one new event: the index is built here
        first_s = time.perf_counter() - t0
        fi = back.items.derived["ann.imp"]
        ix = fi.ix
        log(f"item_restore: first event after the restore (index build) {first_s:.1f} s")
        report = {
            "command": " ".join(["python", "benchmarks/item_restore.py", *(argv if argv is not None else sys.argv[1:])]),
            "date": time.strftime("%Y-%m-%d"), "machine": machine(), "versions": versions(),
            "items": n, "users": a.users, "build_s": round(build_s, 1), "write_s": round(write_s, 2),
            "restore_s": round(restore_s, 2), "first_event_s": round(first_s, 2),
            "restore_to_first_list_s": round(restore_s + first_s, 2),
            "disk_bytes_per_item": round(disk / n, 1), "memory_bytes_per_item_row": int(row_bytes),
            "index": fi.info(), "index_bytes_per_item": round(ix.memory_bytes() / n, 1) if ix is not None else None,
        }
        print(json.dumps(report, indent=1))
        if a.out:
            Path(a.out).mkdir(parents=True, exist_ok=True)
            Path(a.out, "item_restore.json").write_text(json.dumps(report, indent=1))
        st.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
