"""Kafka in and out: a batching source, list and dead-letter sinks, topic admin.

``KafkaBatchSource`` follows Bytewax's own Kafka source: one partition of the dataflow
per topic partition, its position (the next offset) kept in Bytewax's recovery store,
not in a consumer group. Without recovery a restart reads from ``start`` again; with
recovery it resumes at the snapshot's offsets. Each poll hands the dataflow one
``RawBatch`` (up to ``batch_size`` messages), so parsing and routing run per batch.
Lag is the partition's high watermark minus the position, from the consumer itself.

Lists are produced keyed by user id with the murmur2 partitioner (as Java clients), so
a user's lists stay on one partition, in order. Dead letters keep the original key and
bytes and carry the reason and origin in headers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Optional

import orjson
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from .control import STOP


log = logging.getLogger("recsys_stream.kafka")


class KafkaSetupError(RuntimeError):
    """Brokers unreachable, a topic missing, or a topic that cannot be created."""


@dataclass
class RawBatch:
    """Messages of one poll of one partition, as they came."""

    topic: str
    partition: int
    keys: list
    values: list
    offsets: list
    ingest_ts: float  # wall clock when the poll returned

    def __len__(self):
        return len(self.values)


def admin(conf: dict) -> AdminClient:
    return AdminClient({k: v for k, v in conf.items() if k not in CONSUMER_ONLY})


CONSUMER_ONLY = {"group.id", "auto.offset.reset", "enable.auto.commit", "enable.partition.eof"}


def topic_partitions(conf: dict, topic: str, timeout: float = 15.0) -> int:
    """Number of partitions of ``topic``; a clear error when it is missing."""
    try:
        md = admin(conf).list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        raise KafkaSetupError(f"cannot reach the brokers {conf.get('bootstrap.servers')!r}: {exc}") from None
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise KafkaSetupError(
            f"input topic {topic!r} does not exist on {conf.get('bootstrap.servers')!r}; "
            "create it (or check --input-topic): the job never creates its input"
        )
    return len(t.partitions)


def ensure_topics(conf: dict, topics: list[str], partitions: int, replication: int, timeout: float = 30.0) -> list[str]:
    """Create the missing ones of ``topics``; returns the names created."""
    a = admin(conf)
    try:
        existing = set(a.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise KafkaSetupError(f"cannot reach the brokers {conf.get('bootstrap.servers')!r}: {exc}") from None
    missing = [t for t in dict.fromkeys(topics) if t and t not in existing]
    if not missing:
        return []
    futures = a.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=replication) for t in missing])
    for t, fut in futures.items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise KafkaSetupError(f"cannot create topic {t!r}: {exc}") from None
    log.info("created topics %s", missing)
    return missing


# -- source ---------------------------------------------------------------------------


class _PartitionReader(StatefulSourcePartition):
    def __init__(self, conf: dict, topic: str, partition: int, offset: int, batch_size: int, exit_at_end: bool,
                 metrics, max_rate: float = 0.0):
        self.topic = topic
        self.partition = partition
        self.batch_size = batch_size
        self.metrics = metrics
        self.max_rate = max_rate
        self._t0 = time.monotonic()
        self._taken = 0
        c = dict(conf)
        c.setdefault("group.id", f"recsys-stream.{topic}")  # librdkafka wants one; no commits are made
        c["enable.auto.commit"] = False
        c["enable.auto.offset.store"] = False
        c.setdefault("fetch.wait.max.ms", 5)
        self.consumer = Consumer(c)
        self.consumer.assign([TopicPartition(topic, partition, offset)])
        self.tp = TopicPartition(topic, partition)
        self.position = offset if offset >= 0 else None
        self.end = None
        if exit_at_end:
            lo, hi = self.consumer.get_watermark_offsets(self.tp, timeout=15.0)
            self.end = hi
            if self.position is None:
                self.position = lo if offset == OFFSET_BEGINNING else hi
        self._last_lag = 0.0

    def next_batch(self):
        if STOP.is_set():
            raise StopIteration()
        if self.end is not None and self.position is not None and self.position >= self.end:
            raise StopIteration()
        n = self.batch_size
        if self.max_rate > 0:  # throttle: at most max_rate messages per second, on average
            n = min(n, int(self.max_rate * (time.monotonic() - self._t0)) - self._taken)
            if n <= 0:
                return []
        msgs = self.consumer.consume(n, 0.001)
        self._taken += len(msgs)
        keys, values, offsets = [], [], []
        for m in msgs:
            err = m.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error on %s[%d]: %s", self.topic, self.partition, err)
                continue
            keys.append(m.key())
            values.append(m.value())
            offsets.append(m.offset())
        now = time.time()
        if offsets:
            self.position = offsets[-1] + 1
        if self.metrics is not None and now - self._last_lag > 1.0:
            self._last_lag = now
            try:
                _lo, hi = self.consumer.get_watermark_offsets(self.tp, cached=True)
                if hi >= 0 and self.position is not None:
                    self.metrics.lag(self.topic, self.partition, max(0, hi - self.position))
            except KafkaException:
                pass
        if not values:
            return []
        return [RawBatch(self.topic, self.partition, keys, values, offsets, now)]

    def snapshot(self) -> Optional[int]:
        return self.position

    def close(self) -> None:
        self.consumer.close()


class KafkaBatchSource(FixedPartitionedSource):
    """Batches of raw messages from every partition of ``topic`` (see module docstring)."""

    def __init__(self, conf: dict, topic: str, start: str = "earliest", batch_size: int = 2000,
                 exit_at_end: bool = False, metrics=None, max_rate: float = 0.0):
        self.conf = conf
        self.max_rate = max_rate  # per partition, messages/s (0: unthrottled)
        self.topic = topic
        self.start = OFFSET_BEGINNING if start == "earliest" else OFFSET_END
        self.batch_size = batch_size
        self.exit_at_end = exit_at_end
        self.metrics = metrics

    def list_parts(self):
        n = topic_partitions(self.conf, self.topic)
        return [f"{p}-{self.topic}" for p in range(n)]

    def build_part(self, step_id, for_part, resume_state):
        p = int(for_part.split("-", 1)[0])
        offset = resume_state if resume_state is not None else self.start
        return _PartitionReader(self.conf, self.topic, p, offset, self.batch_size, self.exit_at_end, self.metrics,
                                self.max_rate)


# -- sinks ----------------------------------------------------------------------------


def producer_config(conf: dict) -> dict:
    c = {k: v for k, v in conf.items() if k not in CONSUMER_ONLY and not k.startswith("fetch.")}
    c.setdefault("partitioner", "murmur2_random")  # the Java client's key hashing
    c.setdefault("linger.ms", 2)
    c.setdefault("enable.idempotence", True)
    return c


class _ProducerPartition(StatelessSinkPartition):
    def __init__(self, conf: dict):
        self.producer = Producer(producer_config(conf))
        self.errors: list = []

    def _report(self, err, msg):
        if err is not None:
            self.errors.append(err)

    def _flush(self) -> None:
        # Block until every message of this batch is acknowledged: a snapshot after this
        # batch must not commit input whose output could still be lost (at-least-once).
        remaining = self.producer.flush(30.0)
        if remaining or self.errors:
            err = self.errors[0] if self.errors else f"{remaining} message(s) not delivered in 30 s"
            self.errors.clear()
            raise KafkaException(err)

    def close(self) -> None:
        self.producer.flush(30.0)


class _ListsPartition(_ProducerPartition):
    def __init__(self, sink: "KafkaListsSink"):
        super().__init__(sink.conf)
        self.sink = sink

    def write_batch(self, items) -> None:
        topic = self.sink.topic
        produce = self.producer.produce
        n = 0
        now = time.time()
        for recs in items:
            for rec in recs:
                ingest = rec.pop("_ingest_ts", None)
                rec["emitted_at"] = now
                produce(topic, value=orjson.dumps(rec), key=rec["user"].encode("utf-8"), on_delivery=self._report)
                n += 1
                if self.sink.metrics is not None and ingest is not None:
                    self.sink.metrics.emit_latency(now - ingest)
            self.producer.poll(0)
        self._flush()
        if self.sink.metrics is not None:
            self.sink.metrics.lists_out(n)


class KafkaListsSink(DynamicSink):
    """Produces list records (dicts) to ``topic``, keyed by user id (murmur2)."""

    keyed = False  # a DynamicSink: each worker produces the lists its shards computed

    def __init__(self, conf: dict, topic: str, metrics=None):
        self.conf = conf
        self.topic = topic
        self.metrics = metrics

    def build(self, step_id, worker_index, worker_count):
        return _ListsPartition(self)


class _DeadLetterPartition(_ProducerPartition):
    def __init__(self, sink: "KafkaDeadLetterSink"):
        super().__init__(sink.conf)
        self.sink = sink

    def write_batch(self, items) -> None:
        for dls in items:
            for d in dls:
                headers = [("recsys.error.reason", d.reason.encode("utf-8")),
                           ("recsys.error.source", d.source.encode("utf-8"))]
                if d.partition is not None:
                    headers.append(("recsys.error.partition", str(d.partition).encode()))
                if d.offset is not None:
                    headers.append(("recsys.error.offset", str(d.offset).encode()))
                self.producer.produce(self.sink.topic, value=d.raw, key=d.key, headers=headers,
                                      on_delivery=self._report)
            self.producer.poll(0)
        self._flush()


class KafkaDeadLetterSink(DynamicSink):
    """Produces ``DeadLetter``s: original key and bytes, reason and origin in headers."""

    def __init__(self, conf: dict, topic: str):
        self.conf = conf
        self.topic = topic

    def build(self, step_id, worker_index, worker_count):
        return _DeadLetterPartition(self)
