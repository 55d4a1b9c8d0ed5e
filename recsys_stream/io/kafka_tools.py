"""``replay`` (a file's events into a topic) and ``tail`` (print the lists of a topic)."""

from __future__ import annotations

import sys
import time
import uuid
from typing import Callable, Iterable

import orjson
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaException, Producer, TopicPartition

from ..events import TYPE_NAMES, EventBatch
from .kafka import KafkaSetupError, admin, client, producer_config, unreachable


def event_messages(batch: EventBatch, source: str) -> Iterable[tuple[bytes, bytes]]:
    """(key, value) of each event in the JSON event format; the id names source and line."""
    for e in range(len(batch)):
        user = batch.user[e]
        obj = {
            "user": user,
            "item": batch.item[e],
            "ts": float(batch.ts[e]),
            "type": TYPE_NAMES[int(batch.etype[e])],
            "value": float(batch.value[e]),
            "id": f"{source}:{int(batch.offset[e])}",
        }
        yield user.encode("utf-8"), orjson.dumps(obj)


def produce_messages(conf: dict, topic: str, messages: Iterable[tuple[bytes, bytes]], total: int,
                     rate: float = 0.0, progress: Callable[[str], None] | None = None,
                     on_send: Callable[[int, float], None] | None = None) -> int:
    """Produce (key, value) pairs at ``rate`` messages/s (0: as fast as possible), keyed
    with the murmur2 partitioner; returns how many were produced (all acknowledged)."""
    p = client(Producer, producer_config(conf), quiet=True)
    errors: list = []

    def report(err, _msg):
        if err is not None:
            errors.append(err)

    t0 = time.perf_counter()
    last = t0
    n = 0
    for key, value in messages:
        if rate > 0:
            due = t0 + n / rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
        while True:
            try:
                p.produce(topic, value=value, key=key, on_delivery=report)
                break
            except BufferError:  # the local queue is full: let deliveries drain
                p.poll(0.05)
        if on_send is not None:
            on_send(n, time.time())
        n += 1
        p.poll(0)
        now = time.perf_counter()
        if progress is not None and now - last > 1.0:
            last = now
            progress(f"replay: {n:,}/{total:,} events, {n / (now - t0):,.0f} events/s")
    left = p.flush(60.0)
    if left or errors:
        why = errors[0].str() if errors else f"{left} message(s) not delivered within 60 s (are the brokers up?)"
        raise KafkaSetupError(f"producing to topic {topic!r} on {conf.get('bootstrap.servers')!r} failed after "
                              f"{n:,} message(s): {why}")
    if progress is not None:
        progress(f"replay: {n:,} events in {time.perf_counter() - t0:.2f} s")
    return n


def tail_consumer(conf: dict, topic: str, from_beginning: bool, timeout: float = 15.0) -> Consumer:
    """A consumer assigned every partition of ``topic`` (no group offsets are committed).
    A missing topic is refused at once (it is not waited for: the job creates its output
    topic when it starts, so start the job first); unreachable brokers after ``timeout``."""
    try:
        md = admin(conf).list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        raise unreachable(conf, exc, timeout) from None
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise KafkaSetupError(f"topic {topic!r} does not exist on {conf.get('bootstrap.servers')!r} (--topic); the "
                              "job creates its output topic when it starts: start it first, or check the name")
    c = dict(conf)
    c["group.id"] = f"recsys-stream-tail-{uuid.uuid4().hex[:8]}"
    c["enable.auto.commit"] = False
    consumer = client(Consumer, c, quiet=True)
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in sorted(t.partitions)])
    return consumer


def tail(conf: dict, topic: str, from_beginning: bool = False, max_messages: int = 0, timeout_s: float = 0.0,
         out=sys.stdout) -> int:
    """Print each list as one JSON line; stop after ``max_messages`` or ``timeout_s`` idle."""
    consumer = tail_consumer(conf, topic, from_beginning)
    n = 0
    idle_since = time.monotonic()
    try:
        while True:
            m = consumer.poll(0.2)
            if m is None:
                if timeout_s and time.monotonic() - idle_since > timeout_s:
                    break
                continue
            if m.error() is not None:
                continue
            idle_since = time.monotonic()
            out.write(m.value().decode("utf-8", "replace"))
            out.write("\n")
            out.flush()
            n += 1
            if max_messages and n >= max_messages:
                break
    finally:
        consumer.close()
    return n
