"""What losing a process costs a cluster (issue #8, docs/scaleout.md "N hosts"): a
2-process cluster with checkpoints runs on ML-100K at a fixed rate; one process is
SIGKILLed; we time how long the survivor takes to stop, then start both again from the
same checkpoint directory and time the first new list reaching a consumer (process
start, restore of every item bucket, the cluster's connection, the replay of the events
since the last committed epoch).

    scripts/kafka-dev.sh start
    python benchmarks/cluster_restart.py --models itemknn,mf --repeat 3 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from confluent_kafka import OFFSET_END, Consumer, TopicPartition

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

from cluster_kafka import free_ports, topic  # noqa: E402
from e2e_kafka import messages, produce  # noqa: E402

from recsys_stream.io.readers import read_events  # noqa: E402

DEFAULT_DATA = (ROOT / ".." / "shared" / "datasets" / "ml-100k").resolve()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def once(boot: str, inp: str, model: str, rate: float, partitions: int, run_s: float) -> dict:
    out = f"restart-out-{uuid.uuid4().hex[:8]}"
    ckpt = tempfile.mkdtemp(prefix="restart-") + "/ckpt"
    base = [sys.executable, "-m", "recsys_stream.cli", "run", "--brokers", boot, "--input-topic", inp,
            "--output-topic", out, "--dead-letter-topic", out + "-dead", "--model", model, "--refresh-interval", "0",
            "--checkpoint-dir", ckpt, "--checkpoint-interval", "1", "--max-rate", str(rate / partitions)]

    def start():
        addr = ";".join(f"127.0.0.1:{p}" for p in free_ports(2))
        return [subprocess.Popen([*base, "--process-id", str(p), "--addresses", addr], cwd=ROOT,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for p in range(2)]

    procs = start()
    c = None
    deadline = time.time() + 120
    while c is None:  # the job creates its output topic
        probe = Consumer({"bootstrap.servers": boot, "group.id": "probe-" + out})
        t = probe.list_topics(out, timeout=5).topics.get(out)
        if t is not None and t.error is None and t.partitions:
            c = probe
            c.assign([TopicPartition(out, p, OFFSET_END) for p in t.partitions])
        else:
            probe.close()
            if time.time() > deadline:
                raise SystemExit("cluster_restart: the job never created its output topic")
            time.sleep(0.2)

    def drain() -> int:
        return sum(1 for m in c.consume(10000, 0.05) if m.error() is None)

    t_end = time.time() + run_s
    while time.time() < t_end:
        drain()
    procs[1].send_signal(signal.SIGKILL)
    t_kill = time.time()
    procs[0].wait(120)
    t_stopped = time.time()
    procs[1].wait(60)
    while drain():
        pass
    t0 = time.time()
    procs = start()
    while not drain():
        if any(p.poll() is not None for p in procs):
            raise SystemExit(f"cluster_restart: a restarted process ended:\n{procs[0].stderr.read()[-2000:]}")
    t_first = time.time()
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        p.wait(120)
    c.close()
    return {"survivor_stopped_s": round(t_stopped - t_kill, 3), "restart_to_first_list_s": round(t_first - t0, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with MovieLens 100K u.data")
    ap.add_argument("--models", default="itemknn,mf")
    ap.add_argument("--rate", type=float, default=8000.0, help="events/s in all")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--run-s", type=float, default=8.0, help="seconds before the kill")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "results")
    a = ap.parse_args(argv)
    if not (a.data / "u.data").exists():
        print(f"cluster_restart: error: {a.data / 'u.data'} not found (MovieLens 100K; --data)", file=sys.stderr)
        return 2
    events = read_events(str(a.data / "u.data")).events
    result: dict = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "date": time.strftime("%Y-%m-%d"),
                    "rate": a.rate, "models": {}}
    for model in a.models.split(","):
        runs = []
        for rep in range(a.repeat):
            inp = topic(a.brokers, "bench-restart", a.partitions)
            produce(a.brokers, inp, messages(events, 1))
            r = once(a.brokers, inp, model, a.rate, a.partitions, a.run_s)
            runs.append(r)
            log(f"cluster_restart: {model} repeat {rep + 1}/{a.repeat}: {r}")
        result["models"][model] = {"runs": runs, "median": {k: statistics.median(r[k] for r in runs) for k in runs[0]}}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "cluster_restart.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
