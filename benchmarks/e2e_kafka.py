"""End to end through a real broker: sustained events/s of one worker, and event-to-list
latency at fixed input rates.

Throughput: MovieLens 100K replayed ``--passes`` times (event ids and times made unique
per pass) is produced into a topic first; one worker (``recsys-stream run --workers 1
--exit-at-end``) then drains it. Sustained events/s is the events over the time between
the first and the last list produced (refresh interval 0: every batch emits lists).

Latency: the worker runs, tailing its topic; a producer sends ML-100K events at a fixed
rate, recording each message's send time by (partition, offset) from its delivery
report; a consumer stamps each list's receipt. Latency = receipt - send time of the
event that triggered the list (``trigger`` in the list), p50/p99/max over the run after
a warm-up (``--warmup-s``: the first seconds, where connections to partition leaders are
made, are reported apart).
CPU is the worker process's user+system time over the wall time of the phase.

    scripts/kafka-dev.sh start
    python benchmarks/e2e_kafka.py --brokers 127.0.0.1:9092 --out benchmarks/results
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from recsys_stream.io.readers import read_events  # noqa: E402

DEFAULT_DATA = (ROOT / ".." / "shared" / "datasets" / "ml-100k").resolve()


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def create(boot: str, name: str, partitions: int) -> None:
    a = AdminClient({"bootstrap.servers": boot})
    for _t, f in a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).items():
        f.result(30)


def messages(events, passes: int):
    span = float(events.ts[-1] - events.ts[0]) + 1.0
    for p in range(passes):
        for e in range(len(events)):
            u = events.user[e]
            yield u.encode(), orjson.dumps({"user": u, "item": events.item[e], "ts": float(events.ts[e]) + p * span,
                                            "type": "rating", "value": float(events.value[e]),
                                            "id": f"{p}:{int(events.offset[e])}"})


def produce(boot: str, topic: str, msgs) -> int:
    """Every (key, value) of ``msgs`` into ``topic``, partitioned by murmur2 of the key as
    Java clients do; returns how many (all delivered)."""
    p = Producer({"bootstrap.servers": boot, "linger.ms": 20, "batch.num.messages": 10000,
                  "compression.type": "lz4", "partitioner": "murmur2_random"})
    n = 0
    for key, value in msgs:
        while True:
            try:
                p.produce(topic, key=key, value=value)
                break
            except BufferError:
                p.poll(0.05)
        n += 1
        if n % 10000 == 0:
            p.poll(0)
    if p.flush(120) != 0:
        raise RuntimeError(f"{topic}: not every message was delivered")
    return n


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CHECKPOINT_S = 0.0  # --checkpoint-interval: 0 runs the job without checkpoints


def start_job(boot: str, inp: str, out: str, model: str, extra: list[str]) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "recsys_stream.cli", "run", "--brokers", boot, "--input-topic", inp,
           "--output-topic", out, "--dead-letter-topic", out + "-dead", "--workers", "1", "--model", model,
           "--refresh-interval", "0", *extra]
    if CHECKPOINT_S > 0:
        cmd += ["--checkpoint-dir", tempfile.mkdtemp(prefix="e2e-ckpt-"), "--checkpoint-interval", str(CHECKPOINT_S)]
    prof = os.environ.get("RECSYS_BENCH_PROFILE")  # py-spy output file: profile the worker (development aid)
    if prof:
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "-r", "200", "--threads", "-f", "raw", "-o", prof,
               "--"] + cmd
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_topic(boot: str, topic: str, timeout: float = 60.0) -> list[int]:
    a = AdminClient({"bootstrap.servers": boot})
    t0 = time.time()
    while time.time() - t0 < timeout:
        t = a.list_topics(topic=topic, timeout=5).topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            return sorted(t.partitions)
        time.sleep(0.2)
    raise TimeoutError(topic)


def throughput(boot: str, events, passes: int, model: str) -> dict:
    inp, out = f"bench-in-{uuid.uuid4().hex[:8]}", f"bench-out-{uuid.uuid4().hex[:8]}"
    create(boot, inp, 1)
    log(f"throughput: producing {passes * len(events):,} events into {inp}")
    produce(boot, inp, messages(events, passes))
    t0 = time.time()
    job = start_job(boot, inp, out, model, ["--exit-at-end", "--batch-size", "5000"])
    job.wait(1800)
    wall = time.time() - t0
    if job.returncode != 0:
        raise RuntimeError(job.stderr.read()[-3000:])
    c = Consumer({"bootstrap.servers": boot, "group.id": uuid.uuid4().hex, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    c.subscribe([out])
    first = last = None
    n = 0
    idle = time.time()
    while time.time() - idle < 5:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        idle = time.time()
        t = orjson.loads(m.value())["emitted_at"]
        first = t if first is None else min(first, t)
        last = t if last is None else max(last, t)
        n += 1
    c.close()
    total = passes * len(events)
    active = last - first
    return {"events": total, "lists": n, "active_s": round(active, 3), "events_per_s": round(total / active, 1),
            "wall_s_including_startup": round(wall, 2), "model": model, "workers": 1,
            "checkpoint_interval_s": CHECKPOINT_S or None}


def latency(boot: str, events, rate: float, seconds: float, model: str, linger_ms: int, warmup_s: float) -> dict:
    inp, out = f"lat-in-{uuid.uuid4().hex[:8]}", f"lat-out-{uuid.uuid4().hex[:8]}"
    create(boot, inp, 3)
    job = start_job(boot, inp, out, model, ["--start", "latest", "--batch-size", "2000"])
    parts = wait_topic(boot, out)
    received: dict = {}
    stop = threading.Event()
    c = Consumer({"bootstrap.servers": boot, "group.id": uuid.uuid4().hex, "enable.auto.commit": False})
    c.assign([TopicPartition(out, q, OFFSET_END) for q in parts])

    def consume():
        while not stop.is_set():
            m = c.poll(0.05)
            if m is None or m.error():
                continue
            now = time.time()
            trig = orjson.loads(m.value())["trigger"]
            received[(trig["partition"], trig["offset"])] = now

    th = threading.Thread(target=consume, daemon=True)
    th.start()
    time.sleep(3.0)  # the job is up and polling
    sent: dict = {}
    p = Producer({"bootstrap.servers": boot, "linger.ms": linger_ms, "partitioner": "murmur2_random"})

    def on_delivery(err, msg, t):
        if err is None:
            sent[(msg.partition(), msg.offset())] = t

    total = int(rate * (seconds + warmup_s))
    cpu0 = cpu_seconds(job.pid)
    t0 = time.perf_counter()
    w0 = time.time()
    gen = messages(events, 1 + total // len(events))
    for i in range(total):
        due = t0 + i / rate
        d = due - time.perf_counter()
        if d > 0:
            time.sleep(d)
        k, v = next(gen)
        t = time.time()
        p.produce(inp, key=k, value=v, on_delivery=lambda err, msg, t=t: on_delivery(err, msg, t))
        p.poll(0)
    p.flush(60)
    send_wall = time.time() - w0
    time.sleep(3.0)
    cpu = cpu_seconds(job.pid) - cpu0
    stop.set()
    th.join(5)
    c.close()
    job.terminate()
    job.wait(60)
    if os.environ.get("RECSYS_SNAPSHOT_TIMING"):
        sys.stderr.write(job.stderr.read()[-20000:])
    pairs = [(sent[key], received[key] - sent[key]) for key in received if key in sent]
    if not pairs:
        raise RuntimeError("no lists received")
    start = min(t for t, _l in pairs) + warmup_s
    lat = sorted(lat for t, lat in pairs if t >= start)
    warm = [lat for t, lat in pairs if t < start]
    q = statistics.quantiles(lat, n=100)
    return {"rate": rate, "seconds": seconds, "events": total, "lists": len(lat), "p50_ms": round(1000 * q[49], 2),
            "p99_ms": round(1000 * q[98], 2), "max_ms": round(1000 * lat[-1], 2),
            "warmup_s": warmup_s, "warmup_max_ms": round(1000 * max(warm), 2) if warm else None,
            "achieved_rate": round(total / send_wall, 1), "worker_cpu_pct": round(100 * cpu / (send_wall + 3.0), 1),
            "linger_ms": linger_ms, "model": model, "refresh_interval_s": 0, "checkpoint_interval_s": CHECKPOINT_S or None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--brokers", default="127.0.0.1:9092")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--model", default="itemknn")
    ap.add_argument("--passes", type=int, default=5, help="throughput run: ML-100K this many times")
    ap.add_argument("--rates", default="1000,10000")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of each latency run")
    ap.add_argument("--linger-ms", type=int, default=2, help="the benchmark producer's linger.ms")
    ap.add_argument("--warmup-s", type=float, default=3.0, help="seconds of each latency run left out")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--checkpoint-interval", type=float, default=0.0,
                    help="run the worker with checkpoints every S seconds (0: without)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    global CHECKPOINT_S
    CHECKPOINT_S = a.checkpoint_interval
    events = read_events(str(a.data / "u.data")).events
    res = {"command": " ".join([Path(sys.executable).name, *sys.argv]), "date": time.strftime("%Y-%m-%d"),
           "throughput": [], "latency": []}
    for r in range(a.repeat):
        log(f"throughput run {r + 1}/{a.repeat}")
        res["throughput"].append(throughput(a.brokers, events, a.passes, a.model))
        log(json.dumps(res["throughput"][-1]))
    for rate in [float(x) for x in a.rates.split(",")]:
        for r in range(a.repeat):
            log(f"latency at {rate:,.0f} events/s, run {r + 1}/{a.repeat}")
            res["latency"].append(latency(a.brokers, events, rate, a.seconds, a.model, a.linger_ms, a.warmup_s))
            log(json.dumps(res["latency"][-1]))
    med = {"throughput_events_per_s": statistics.median(x["events_per_s"] for x in res["throughput"])}
    for rate in {x["rate"] for x in res["latency"]}:
        runs = [x for x in res["latency"] if x["rate"] == rate]
        med[f"rate_{int(rate)}"] = {k: statistics.median(x[k] for x in runs)
                                    for k in ("p50_ms", "p99_ms", "max_ms", "worker_cpu_pct", "achieved_rate")}
    res["medians"] = med
    print(json.dumps(res))
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        name = "e2e_kafka.json" if not CHECKPOINT_S else "e2e_kafka_checkpoint.json"
        (a.out / name).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
