"""Lookups on the output topic: a user's latest list (``recsys-stream lists``).

The job keys every list by its user and partitions it with murmur2 as Java clients do,
and creates the topic compacted, so the topic itself is the store of every user's latest
list: a reader hashes the user id to its partition and reads that partition to its end,
keeping the record of the highest ``version`` (compaction keeps the last per key; the
uncompacted tail may hold several, a restarted job's repeats included).
"""

from __future__ import annotations

import time


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of a key, as the Java client's partitioner (and librdkafka's
    ``murmur2_random``, which the list sink uses) computes it; the Java client's test vectors:

    >>> import ctypes
    >>> [ctypes.c_int32(murmur2(k)).value for k in (b"21", b"foobar", b"abc")]
    [-973932308, -790332482, 479470107]
    """
    m, r = 0x5BD1E995, 24
    h = (0x9747B28C ^ len(data)) & 0xFFFFFFFF
    n4 = len(data) // 4
    for i in range(n4):
        k = (int.from_bytes(data[4 * i:4 * i + 4], "little") * m) & 0xFFFFFFFF
        k ^= k >> r
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    tail = data[4 * n4:]
    if len(tail) >= 3:
        h ^= tail[2] << 16
    if len(tail) >= 2:
        h ^= tail[1] << 8
    if tail:
        h = ((h ^ tail[0]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    return h ^ (h >> 15)


def key_partition(key: bytes, partitions: int) -> int:
    """The partition a keyed record goes to: ``(murmur2(key) & 0x7fffffff) % partitions``.

    >>> [key_partition(k, 3) for k in (b"42", b"u1", b"a-longer-user-id")]
    [1, 1, 0]
    """
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def latest_lists(conf: dict, topic: str, users: list[str], timeout: float = 15.0) -> dict:
    """Each user's latest list on ``topic``: the record of the highest ``version`` among
    those keyed by the user, read from the beginning to the end offset of the user's
    partition only (murmur2 of the key). Returns user -> (partition, offset, record,
    version); a user without a record is left out."""
    import orjson
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    from .kafka import KafkaSetupError, client, topic_partitions, unreachable

    n = topic_partitions(conf, topic, timeout, missing="the job creates its output topic when it starts: check --topic")
    wanted: dict[int, dict[bytes, str]] = {}
    for u in users:
        wanted.setdefault(key_partition(u.encode("utf-8"), n), {})[u.encode("utf-8")] = u
    c = dict(conf, **{"group.id": "recsys-stream-lists", "enable.auto.commit": False, "enable.partition.eof": True})
    consumer = client(Consumer, c, quiet=True)
    found: dict = {}  # user -> (partition, offset, record, version)
    deadline = time.monotonic() + timeout
    last_error = None
    try:
        for p, keys in sorted(wanted.items()):
            tp = TopicPartition(topic, p)
            try:
                low, high = consumer.get_watermark_offsets(tp, timeout=timeout)
            except KafkaException as exc:
                raise unreachable(conf, exc, timeout) from None
            if high <= low:
                continue  # nothing in this partition
            consumer.assign([TopicPartition(topic, p, low)])
            while True:
                m = consumer.poll(0.5)
                if m is None or (m.error() is not None and m.error().code() != KafkaError._PARTITION_EOF):
                    if m is not None:
                        if m.error().fatal():
                            raise KafkaSetupError(f"reading partition {p} of topic {topic!r}: {m.error().str()}")
                        last_error = m.error().str()  # librdkafka retries; the deadline ends the wait
                    if time.monotonic() > deadline:
                        raise KafkaSetupError(f"reading partition {p} of topic {topic!r} did not reach its end offset "
                                              f"{high} within {timeout:g} s (--timeout)"
                                              + (f"; last error: {last_error}" if last_error else ""))
                    continue
                if m.partition() != p:
                    continue  # left over from the previous assignment
                if m.error() is not None:  # the end of the partition
                    break
                user = keys.get(m.key())
                if user is not None:
                    if m.value() is None:  # a tombstone deletes the key's earlier records
                        found.pop(user, None)
                    else:
                        try:
                            rec = orjson.loads(m.value())
                            version = int(rec["version"])
                        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                            rec = None  # not a list record: skipped
                        if rec is not None and (user not in found or version >= found[user][3]):
                            found[user] = (p, m.offset(), rec, version)
                if m.offset() >= high - 1:
                    break
    finally:
        consumer.close()
    return found
