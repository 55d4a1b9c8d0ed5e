"""Kafka in and out: a batching source, list and dead-letter sinks, topic admin.

``KafkaBatchSource`` follows Bytewax's own Kafka source: one partition of the dataflow
per topic partition, its position (the next offset) kept in Bytewax's recovery store,
not in a consumer group. Without recovery a restart reads from ``start`` again; with
recovery it resumes at the snapshot's offsets. Each poll hands the dataflow one
``RawBatch`` (up to ``batch_size`` messages), so parsing and routing run per batch.
Lag is the partition's high watermark minus the position, from the consumer itself.

Lists are produced keyed by user id with the murmur2 partitioner (as Java clients), so
a user's lists stay on one partition, in order. Dead letters keep the original key and
bytes and carry the reason and origin in headers. A dead letter is forwarded whole when
the dead-letter topic accepts its size (the producer's ``message.max.bytes`` follows the
topic's ``max.message.bytes``); one it refuses is forwarded truncated, with the headers
``recsys.error.truncated`` (the original size in bytes) and the reason, and logged: a
message the input accepted never stops the job, and is never lost from the count.

Every client is made by ``client``: a setting librdkafka does not know (``--kafka
bogus.key=1``) is a ``KafkaSetupError`` naming it, and librdkafka's own log lines go
through Python logging (``recsys_stream.librdkafka``), so ``--log-format json`` covers
them; setup-time clients and the command-line tools are quiet (they report errors
themselves).
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
    """Brokers unreachable, a topic missing, a topic that cannot be created, or a client
    setting librdkafka refuses."""


RDKAFKA_LOG = logging.getLogger("recsys_stream.librdkafka")
_QUIET = logging.getLogger("recsys_stream.librdkafka.quiet")
_QUIET.propagate = False
_QUIET.addHandler(logging.NullHandler())
_QUIET.setLevel(logging.CRITICAL + 1)


def kafka_reason(exc: BaseException) -> str:
    err = exc.args[0] if getattr(exc, "args", None) else None
    return err.str() if isinstance(err, KafkaError) else str(exc)


def client(cls, conf: dict, quiet: bool = False):
    """A librdkafka client (``Producer``, ``Consumer``, ``AdminClient``) with its logs in
    Python logging; a refused setting is a ``KafkaSetupError`` naming it."""
    c = dict(conf)
    c.setdefault("logger", _QUIET if quiet else RDKAFKA_LOG)
    try:
        return cls(c)
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if isinstance(err, KafkaError) and err.code() == KafkaError._INVALID_ARG:
            raise KafkaSetupError(f"Kafka client setting refused: {err.str()} (settings come from --kafka KEY=VALUE, "
                                  "the [kafka] table of --config and RECSYS_KAFKA_*; see librdkafka's "
                                  "CONFIGURATION.md)") from None
        raise
    except (TypeError, ValueError) as exc:
        raise KafkaSetupError(f"Kafka client setting refused: {exc}") from None


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
    return client(AdminClient, {k: v for k, v in conf.items() if k not in CONSUMER_ONLY}, quiet=True)


CONSUMER_ONLY = {"group.id", "auto.offset.reset", "enable.auto.commit", "enable.partition.eof"}


def unreachable(conf: dict, exc: BaseException, timeout: float) -> KafkaSetupError:
    return KafkaSetupError(f"cannot reach the brokers {conf.get('bootstrap.servers')!r} (--brokers) within "
                           f"{timeout:g} s: {kafka_reason(exc)}")


def topic_partitions(conf: dict, topic: str, timeout: float = 15.0, missing: str | None = None) -> int:
    """Number of partitions of ``topic``; a clear error when it is missing (``missing``:
    what to tell the user then)."""
    try:
        md = admin(conf).list_topics(topic=topic, timeout=timeout)
    except KafkaException as exc:
        raise unreachable(conf, exc, timeout) from None
    t = md.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise KafkaSetupError(
            f"{'input ' if missing is None else ''}topic {topic!r} does not exist on {conf.get('bootstrap.servers')!r}; "
            + (missing or "create it (or check --input-topic): the job never creates its input")
        )
    return len(t.partitions)


def topic_config(conf: dict, topic: str, key: str, timeout: float = 15.0) -> str | None:
    """One setting of a topic (e.g. ``max.message.bytes``), or None if it cannot be read."""
    from confluent_kafka.admin import ConfigResource

    try:
        res = ConfigResource(ConfigResource.Type.TOPIC, topic)
        a = admin(conf)  # held until the answer: a destroyed client cancels it
        futures = a.describe_configs([res], request_timeout=timeout)
        entries = next(iter(futures.values())).result(timeout)
        entry = entries.get(key)
        return None if entry is None else entry.value
    except Exception:  # noqa: BLE001: not allowed (ACLs), an old broker, gone: the caller has a fallback
        return None


def ensure_topics(conf: dict, topics: list[str], partitions: int, replication: int, timeout: float = 30.0,
                  configs: dict[str, dict] | None = None) -> list[str]:
    """Create the missing ones of ``topics`` (``configs``: topic settings per name, e.g. a
    dead-letter topic's ``max.message.bytes``); returns the names created."""
    a = admin(conf)
    try:
        existing = set(a.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise unreachable(conf, exc, timeout) from None
    missing = [t for t in dict.fromkeys(topics) if t and t not in existing]
    if not missing:
        return []
    configs = configs or {}
    futures = a.create_topics([NewTopic(t, num_partitions=partitions, replication_factor=replication,
                                        config={k: str(v) for k, v in configs.get(t, {}).items()})
                               for t in missing])
    for t, fut in futures.items():
        try:
            fut.result(timeout)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS:
                continue
            raise KafkaSetupError(f"cannot create topic {t!r}: {exc}") from None
    wait_for_leaders(a, missing, timeout)
    log.info("created topics %s", missing)
    return missing


def wait_for_leaders(a, topics: list[str], timeout: float = 30.0) -> None:
    """Until the metadata shows a leader for every partition of ``topics`` (a topic just
    created has none for a moment: offsets and produce requests fail meanwhile)."""
    deadline = time.monotonic() + timeout
    pending = list(topics)
    while pending:
        try:
            md = a.list_topics(timeout=max(deadline - time.monotonic(), 1.0)).topics
        except KafkaException:
            md = {}
        pending = [t for t in pending if t not in md or md[t].error is not None or not md[t].partitions
                   or any(p.leader < 0 for p in md[t].partitions.values())]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise KafkaSetupError(f"topics {pending} were created but have no partition leader after {timeout:.0f} s")
        time.sleep(0.05)


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
        self.consumer = client(Consumer, c)
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
        self.producer = client(Producer, producer_config(conf))
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


# what a record needs beside its value, key and headers (batch and record framing), with room
DL_OVERHEAD = 4096
DEFAULT_MAX_MESSAGE = 1048588  # the broker's default message.max.bytes


class _DeadLetterPartition(_ProducerPartition):
    def __init__(self, sink: "KafkaDeadLetterSink"):
        self.sink = sink
        self.limit = sink.max_message_bytes()
        conf = dict(sink.conf)
        # librdkafka refuses messages over its own message.max.bytes (1,000,000 by default) before
        # the broker sees them: follow the topic's limit instead
        want = self.limit + DL_OVERHEAD
        if int(conf.get("message.max.bytes", 0) or 0) < want:
            conf["message.max.bytes"] = min(want, 1_000_000_000)
        _ProducerPartition.__init__(self, conf)
        self.retry: list = []

    @staticmethod
    def headers(d, truncated_from: int | None = None) -> list:
        headers = [("recsys.error.reason", d.reason.encode("utf-8")[:16384]),
                   ("recsys.error.source", d.source.encode("utf-8"))]
        if d.partition is not None:
            headers.append(("recsys.error.partition", str(d.partition).encode()))
        if d.offset is not None:
            headers.append(("recsys.error.offset", str(d.offset).encode()))
        if truncated_from is not None:
            headers.append(("recsys.error.truncated", str(truncated_from).encode()))
        return headers

    def _room(self, d) -> int:
        """Bytes of value that fit in the topic's limit beside the key and headers."""
        hsize = sum(len(k) + len(v) + 16 for k, v in self.headers(d, 1 << 40))
        return max(0, self.limit - DL_OVERHEAD - hsize - len(d.key or b""))

    def _produce(self, d, room: int | None = None, attempt: int = 0) -> None:
        value = d.raw
        truncated = None
        if room is None:
            room = self._room(d)
        if len(value) > room:
            truncated = len(value)
            value = value[:room]
            log.error("dead letter from %s[%s] offset %s is %d bytes, more than the dead-letter topic %r accepts: "
                      "forwarded truncated to %d bytes (header recsys.error.truncated); reason: %s", d.source,
                      d.partition, d.offset, truncated, self.sink.topic, room, d.reason[:200])

        def report(err, _msg, d=d, room=room, attempt=attempt):
            if err is None:
                return
            if err.code() == KafkaError.MSG_SIZE_TOO_LARGE and attempt < 4:
                self.retry.append((d, room // 4, attempt + 1))  # the broker's limit is lower than it says
            else:
                self.errors.append(err)

        while True:
            try:
                self.producer.produce(self.sink.topic, value=value, key=d.key,
                                      headers=self.headers(d, truncated), on_delivery=report)
                return
            except BufferError:  # the local queue is full: let deliveries drain
                self.producer.poll(0.1)
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                if isinstance(err, KafkaError) and err.code() == KafkaError.MSG_SIZE_TOO_LARGE and attempt < 4:
                    self._produce(d, room // 4, attempt + 1)
                    return
                raise

    def write_batch(self, items) -> None:
        for dls in items:
            for d in dls:
                self._produce(d)
            self.producer.poll(0)
        while True:
            self.producer.flush(30.0)
            if not self.retry:
                break
            again, self.retry = self.retry, []
            for d, room, attempt in again:
                self._produce(d, room, attempt)
        self._flush()


class KafkaDeadLetterSink(DynamicSink):
    """Produces ``DeadLetter``s: original key and bytes, reason and origin in headers (see
    the module docstring for messages larger than the topic accepts)."""

    def __init__(self, conf: dict, topic: str):
        self.conf = conf
        self.topic = topic

    def max_message_bytes(self) -> int:
        v = topic_config(self.conf, self.topic, "max.message.bytes")
        try:
            return int(v) if v is not None else DEFAULT_MAX_MESSAGE
        except ValueError:
            return DEFAULT_MAX_MESSAGE

    def build(self, step_id, worker_index, worker_count):
        return _DeadLetterPartition(self)
