"""Helpers for tests against the real local broker (scripts/kafka-dev.sh)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from recsys_stream.io.lookup import key_partition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_broker() -> tuple[str, bool]:
    """(bootstrap, started here): the broker of scripts/test.sh, or one started now."""
    boot = os.environ.get("RECSYS_KAFKA_BOOTSTRAP")
    if boot:
        return boot, False
    env = dict(os.environ, RECSYS_KAFKA_PYTHON=sys.executable)
    running = subprocess.run(["bash", os.path.join(ROOT, "scripts", "kafka-dev.sh"), "status"], env=env,
                             capture_output=True, text=True).returncode == 0
    out = subprocess.run(["bash", os.path.join(ROOT, "scripts", "kafka-dev.sh"), "start"], env=env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1], not running


def stop_broker() -> None:
    subprocess.run(["bash", os.path.join(ROOT, "scripts", "kafka-dev.sh"), "stop"], capture_output=True)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_topic(boot: str, name: str, partitions: int = 1) -> str:
    a = AdminClient({"bootstrap.servers": boot})
    for _t, fut in a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)]).items():
        fut.result(30)
    # wait until the metadata shows every partition
    for _ in range(100):
        t = a.list_topics(topic=name, timeout=10).topics.get(name)
        if t is not None and t.error is None and len(t.partitions) == partitions:
            return name
        time.sleep(0.1)
    raise TimeoutError(name)


def produce(boot: str, topic: str, messages, partitioner: str = "murmur2_random") -> None:
    """Produce and wait for every acknowledgement. Idempotent, as the job's own producer:
    without it librdkafka may reorder a partition's messages when it retries a request
    (a broker slow to answer), and the tests read per-user order from the input."""
    p = Producer({"bootstrap.servers": boot, "partitioner": partitioner, "linger.ms": 5,
                  "enable.idempotence": True})
    for key, value in messages:
        p.produce(topic, key=key, value=value)
        p.poll(0)
    assert p.flush(30) == 0


def consume_all(boot: str, topic: str, expect_idle_s: float = 3.0, max_wait_s: float = 120.0, min_count: int = 0):
    """Every message of ``topic`` from the beginning, as (partition, offset, key, value, headers)."""
    a = AdminClient({"bootstrap.servers": boot})
    t0 = time.monotonic()
    while True:  # the job creates its output topics: wait for them
        t = a.list_topics(topic=topic, timeout=10).topics.get(topic)
        if t is not None and t.error is None and t.partitions:
            parts = t.partitions
            break
        if time.monotonic() - t0 > max_wait_s:
            raise TimeoutError(f"topic {topic} did not appear")
        time.sleep(0.2)
    c = Consumer({"bootstrap.servers": boot, "group.id": unique("test"), "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out = []
    last = time.monotonic()
    try:
        while True:
            m = c.poll(0.2)
            now = time.monotonic()
            if m is None or m.error() is not None:
                if (len(out) >= min_count and now - last > expect_idle_s) or now - t0 > max_wait_s:
                    break
                continue
            last = now
            out.append((m.partition(), m.offset(), m.key(), m.value(), m.headers() or []))
    finally:
        c.close()
    return out


def run_job(*args: str, timeout: float = 300.0, env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "recsys_stream.cli", "run", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env=dict(os.environ, **(env or {})))


def start_job(*args: str, env: dict | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "recsys_stream.cli", "run", *args]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, **(env or {})))


def java_partition(key: bytes, partitions: int) -> int:
    """The partition Java clients (murmur2) put ``key`` in: the library's own, checked
    against the Java client's test vectors in its doctest."""
    return key_partition(key, partitions)


def histories(boot: str, topic: str) -> dict[str, list[str]]:
    """Each user's items in the order the broker holds them (a user's events share a
    partition): the order a job reads. Only events with an ``id`` count, each id once, as
    the job's dedupe does; malformed messages (no id) are left out."""
    out: dict[str, list[str]] = {}
    seen: set = set()
    for _p, _o, _k, value, _h in sorted(consume_all(boot, topic), key=lambda m: (m[0], m[1])):
        try:
            ev = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(ev, dict) or "id" not in ev or ev["id"] in seen:
            continue
        seen.add(ev["id"])
        out.setdefault(ev["user"], []).append(ev["item"])
    return out


def records(messages) -> list[dict]:
    return [orjson.loads(v) for _p, _o, _k, v, _h in messages]
