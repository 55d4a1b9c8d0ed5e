"""The item side across processes: owners' updates through a Kafka topic.

Inside a process, an owner forwards the updates it applied to the other replicas through
memory (``hub.Hub.forward``). A cluster of processes also puts them in the hub's
``outbox``; ``ItemSync`` publishes that outbox every ``--sync-interval`` seconds (merged
per bucket and origin replica, so a hot row travels once per interval however often it
changed) to the sync topic, and reads what the other processes publish into every local
replica's inbox (except the replica the update came from: it has its own writes).

What travels are differences and logs of increments, not values (a replica's own writes
in flight to a remote owner would be overwritten by a value). Differences compose only if
each is applied once, so the topic is not compacted (compaction would drop all but the
last per key) and a replica is never rebuilt from it: at a start, every process loads all
buckets from the checkpoint directory and reads the topic from its end as it was before
the cluster started (``start``; processes of a Bytewax cluster begin only when all are
connected, so no process has published since its restore). Messages carry the publishing
process and a sequence number; one seen before (a producer retry) is dropped. Messages
are keyed by the publishing process, so each process's messages stay in order.

The encoding is self-describing and checked (``decode``): a header (JSON) names every
array, its type, shape and place in the body, and items by their external ids; nothing
is unpickled, so a message from outside the cluster can at worst be refused and logged.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import uuid
from dataclasses import replace

import numpy as np
import orjson
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from ..hub import Hub
from ..items import CHUNK, Update, merged
from .kafka import KafkaSetupError, client, ensure_topics, producer_config

log = logging.getLogger("recsys_stream.itemsync")

MAGIC = b"RSU1"
_HEAD = struct.Struct(">4sI")
_LEADER_ERRORS = (KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                  KafkaError.UNKNOWN_TOPIC_OR_PART)
DTYPES = {"<f4", "<f8", "<i4", "<i8", "<u1", "<u8"}
MAX_MESSAGE = 8 << 20  # the sync topic's message limit; larger updates are split
TARGET = 2 << 20  # split updates whose encoding passes this


class SyncFormatError(ValueError):
    pass


def sync_topic_name(output_topic: str) -> str:
    return f"{output_topic}.item-sync"


# -- the encoding -------------------------------------------------------------------------


def encode(u: Update, process: int, seq: int, ids, run: str = "") -> bytes:
    """``u`` (rows of this process, ``ids`` its index's ids; or codes into ``ids``) as bytes;
    ``run`` names the publishing process's run (its sequence numbers start again at 1)."""
    table: dict = {}

    def idx(rows) -> np.ndarray:
        # Python per distinct row, not per pair
        rows = np.asarray(rows, np.int64)
        if not len(rows):
            return np.zeros(0, np.int32)
        uniq, inv = np.unique(rows, return_inverse=True)
        codes = np.fromiter((table.setdefault(ids[r], len(table)) for r in uniq.tolist()), np.int32, len(uniq))
        return codes[inv]

    arrays: list = []
    blobs: list = []
    size = [0]

    def put(field: str, name: str, a) -> None:
        a = np.ascontiguousarray(a)
        dt = a.dtype.newbyteorder("<").str if a.dtype.byteorder == ">" else a.dtype.str
        b = a.astype(dt, copy=False).tobytes()
        arrays.append([field, name, dt, list(a.shape), size[0], len(b)])
        blobs.append(b)
        size[0] += len(b)

    put("rows", "", idx(u.rows))
    for name, d in u.add.items():
        put("add", name, d)
    put("pop_i", "", idx(u.pop[0]))
    put("pop_x", "", np.asarray(u.pop[1], np.float64))
    for name, (i, j, w) in u.pairs.items():
        put("pair_i", name, idx(i))
        put("pair_j", name, idx(j))
        put("pair_w", name, np.asarray(w, np.float64))
    glob = []
    for name, parts in u.glob.items():
        for c, d in parts:
            glob.append([name, int(c)])
            put("glob", name, d)
    cat = [[int(table.setdefault(ids[r], len(table))), int(a)] for r, a in u.catalog] if u.catalog else None
    names = [None] * len(table)
    for k, v in table.items():
        names[v] = k
    head = orjson.dumps({"b": u.bucket, "o": u.origin, "p": process, "r": run, "s": seq, "m": u.made, "ids": names,
                         "arrays": arrays, "glob": glob, "cat": cat})
    return _HEAD.pack(MAGIC, len(head)) + head + b"".join(blobs)


def decode(data: bytes, n_buckets: int) -> tuple[int, str, int, Update]:
    """(publishing process, its run, sequence number, the update naming items by id); a message
    that is not one is a ``SyncFormatError`` saying why."""
    if len(data) < _HEAD.size:
        raise SyncFormatError("shorter than the header")
    magic, n = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise SyncFormatError(f"not an item update (magic {magic!r})")
    if _HEAD.size + n > len(data):
        raise SyncFormatError("the header runs past the message")
    try:
        h = orjson.loads(data[_HEAD.size:_HEAD.size + n])
        body = memoryview(data)[_HEAD.size + n:]
        ids = h["ids"]
        if not isinstance(ids, list) or not all(isinstance(x, str) for x in ids):
            raise SyncFormatError("ids: expected a list of strings")
        bucket, proc, seq, run = int(h["b"]), int(h["p"]), int(h["s"]), str(h.get("r", ""))
        if not 0 <= bucket < n_buckets:
            raise SyncFormatError(f"bucket {bucket} is not one of the job's {n_buckets}")
        got: dict = {}
        for field, name, dt, shape, off, nb in h["arrays"]:
            if dt not in DTYPES:
                raise SyncFormatError(f"{field} {name}: type {dt!r} not allowed")
            if off < 0 or nb < 0 or off + nb > len(body):
                raise SyncFormatError(f"{field} {name}: bytes {off}..{off + nb} outside the body ({len(body)})")
            a = np.frombuffer(body[off:off + nb], dtype=dt)
            if int(np.prod(shape)) != a.size:
                raise SyncFormatError(f"{field} {name}: shape {shape} does not hold {a.size} values")
            a = a.reshape(shape)
            if a.dtype.kind == "f" and not np.isfinite(a).all():
                raise SyncFormatError(f"{field} {name}: not finite")
            if field in ("rows", "pop_i", "pair_i", "pair_j") and a.size and (a.min() < 0 or a.max() >= len(ids)):
                raise SyncFormatError(f"{field} {name}: an item index outside the {len(ids)} ids")
            got.setdefault(field, []).append((name, a))
        return _assemble(h, got, ids, bucket, proc, seq, run)
    except SyncFormatError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, orjson.JSONDecodeError) as exc:
        raise SyncFormatError(f"malformed header: {exc!r}") from None


def _assemble(h: dict, got: dict, ids: list, bucket: int, proc: int, seq: int, run: str):
    def one(field):
        v = got.get(field)
        if not v or len(v) != 1:
            raise SyncFormatError(f"{field}: expected once")
        return v[0][1]

    def named(field):
        return {name: a for name, a in got.get(field, [])}

    names = np.empty(len(ids), dtype=object)
    names[:] = ids
    rows = one("rows").astype(np.int32)
    add = named("add")
    for name, d in add.items():
        if len(d) != len(rows):
            raise SyncFormatError(f"add {name}: {len(d)} rows of differences for {len(rows)} items")
    pop_i, pop_x = one("pop_i"), one("pop_x")
    if len(pop_i) != len(pop_x):
        raise SyncFormatError("pop: as many items as increments expected")
    pi, pj, pw = named("pair_i"), named("pair_j"), named("pair_w")
    pairs = {}
    for name in pi:
        if name not in pj or name not in pw or not len(pi[name]) == len(pj[name]) == len(pw[name]):
            raise SyncFormatError(f"pairs {name}: i, j and w of one length expected")
        pairs[name] = (pi[name].astype(np.int32), pj[name].astype(np.int32), pw[name])
    globs = got.get("glob", [])
    if len(globs) != len(h["glob"]):
        raise SyncFormatError("glob: the chunks and their differences disagree")
    glob: dict = {}
    for (name, c), (name2, d) in zip(h["glob"], globs):
        if name != name2 or int(c) < 0:
            raise SyncFormatError(f"glob {name}: chunk {c} mislabelled")
        glob.setdefault(name, []).append((int(c), d))
    cat = None
    if h.get("cat"):
        cat = []
        for t, a in h["cat"]:
            if not 0 <= int(t) < len(ids):
                raise SyncFormatError("cat: an item index outside the ids")
            cat.append((int(t), int(a)))
    made = float(h["m"])
    if not np.isfinite(made):
        raise SyncFormatError("m: not a finite time")
    u = Update(bucket, str(h["o"]), seq, rows, add, (pop_i.astype(np.int32), pop_x), pairs, glob, ids=True,
               catalog=cat, made=made, names=names)
    return proc, run, seq, u


def fits(u: Update, replica) -> None:
    """A ``SyncFormatError`` unless ``u``'s arrays are the replica's model's: differences of
    known row arrays (one row of the array's shape per item), chunks of known global
    arrays inside them, pools the model has. A well-formed message of another model or of
    an attacker stops here, not in the worker applying it."""
    rows = {s.name: s for s in replica.row_add}
    glob = {s.name: s for s in replica.glob_add}
    a = replica.state.arrays
    for name, d in u.add.items():
        if name not in rows:
            raise SyncFormatError(f"add {name}: not an array of this model's item rows")
        want = a[name].shape[1:]
        kinds = "f" if a[name].dtype.kind == "f" else "iu"
        if d.shape[1:] != want or d.dtype.kind not in kinds:
            raise SyncFormatError(f"add {name}: differences of shape {d.shape[1:]} ({d.dtype}) for rows of shape "
                                  f"{want} ({a[name].dtype})")
    for name, parts in u.glob.items():
        if name not in glob:
            raise SyncFormatError(f"glob {name}: not a global array of this model")
        n = len(a[name])
        for c, d in parts:
            if d.ndim != 1 or c * CHUNK + len(d) > n or (len(d) != min(CHUNK, n - c * CHUNK)):
                raise SyncFormatError(f"glob {name}: chunk {c} of {len(d)} values does not fit {n}")
    for name in u.pairs:
        if name not in replica.state.pools:
            raise SyncFormatError(f"pairs {name}: not a neighbour pool of this model")


def split(u: Update, parts: int) -> list[Update]:
    """``u`` as ``parts`` updates doing the same in order (rows by contiguous ranges, logs
    by contiguous runs, global chunks dealt out; the catalog stays with the first)."""
    if parts <= 1:
        return [u]

    def cut(n, t):
        return slice(n * t // parts, n * (t + 1) // parts)

    out = []
    nr, npop = len(u.rows), len(u.pop[0])
    gl = [(name, c, d) for name, ps in u.glob.items() for c, d in ps]
    for t in range(parts):
        s, sp = cut(nr, t), cut(npop, t)
        pairs = {}
        for name, (i, j, w) in u.pairs.items():
            q = cut(len(i), t)
            pairs[name] = (i[q], j[q], w[q])
        glob: dict = {}
        for name, c, d in gl[cut(len(gl), t)]:
            glob.setdefault(name, []).append((c, d))
        out.append(Update(u.bucket, u.origin, u.seq, u.rows[s], {k: v[s] for k, v in u.add.items()},
                          (u.pop[0][sp], u.pop[1][sp]), pairs, glob, u.ids, u.catalog if t == 0 else None,
                          made=u.made, names=u.names))
    return out


# -- the publisher and the reader -----------------------------------------------------------


class ItemSync:
    """Publishes this process's owners' updates and reads the other processes' (see the
    module docstring). ``start`` before the cluster starts; ``close`` after it stopped."""

    def __init__(self, conf: dict, topic: str, hub: Hub, interval_s: float, process_id: int, processes: int,
                 replication: int = 1, metrics=None):
        self.conf = conf
        self.topic = topic
        self.hub = hub
        self.interval = max(float(interval_s), 0.001)
        self.process = process_id
        self.processes = processes
        self.replication = replication
        self.metrics = metrics
        self.seq = 0
        self.run = uuid.uuid4().hex  # a restarted process numbers its messages from 1 again
        self.seen: dict[tuple, int] = {}  # (process, run) -> the last sequence number read from it
        self.stopping = threading.Event()
        self.errors: list = []
        self.published = 0
        self.received = 0
        self.refused = 0
        self._threads: list = []

    def start(self) -> None:
        ensure_topics(self.conf, [self.topic], max(self.processes, 1), self.replication,
                      configs={self.topic: {"max.message.bytes": str(MAX_MESSAGE), "retention.ms": str(6 * 3600_000)}})
        c = dict(self.conf)
        c.setdefault("group.id", f"recsys-stream.{self.topic}.p{self.process}")
        c["enable.auto.commit"] = False
        c.setdefault("fetch.wait.max.ms", 10)
        c.setdefault("fetch.message.max.bytes", MAX_MESSAGE)
        self.consumer = client(Consumer, c)
        md = self.consumer.list_topics(self.topic, timeout=15.0).topics[self.topic]
        starts = [TopicPartition(self.topic, p, self._end_offset(p)) for p in sorted(md.partitions)]
        self.consumer.assign(starts)
        pc = producer_config(self.conf)
        pc["message.max.bytes"] = MAX_MESSAGE + 65536
        pc.setdefault("compression.type", "lz4")
        self.producer = client(Producer, pc)
        log.info("item sync: topic %s from offsets %s, publishing every %.3f s", self.topic,
                 {t.partition: t.offset for t in starts}, self.interval)
        for fn, name in ((self._publish_loop, "publish"), (self._read_loop, "read")):
            t = threading.Thread(target=fn, name=f"item-sync-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _end_offset(self, partition: int, timeout: float = 30.0) -> int:
        """The partition's end; retried while its leader moves or is being elected (another
        process of the cluster may have created the topic an instant ago)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=15.0)[1]
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                retriable = err is not None and (err.retriable() or err.code() in _LEADER_ERRORS)
                if not retriable or time.monotonic() > deadline:
                    raise KafkaSetupError(f"{self.topic} [{partition}]: cannot read its end offset ({exc})") from None
                time.sleep(0.1)

    # -- publish -----------------------------------------------------------------------

    def _publish_loop(self) -> None:
        while not self.stopping.wait(self.interval):
            self.publish()
        self.publish()

    def publish(self) -> int:
        """Send what the outbox holds; returns the number of messages."""
        ob = self.hub.outbox
        taken = []
        while ob:
            taken.append(ob.popleft())
        if not taken:
            return 0
        groups: dict = {}
        for u in taken:
            groups.setdefault((u.bucket, u.origin), []).append(u)
        ids = self.hub.index.ids.ids
        n = 0
        for (bucket, origin), us in groups.items():
            cat = [u for u in us if u.catalog]
            plain = [u for u in us if not u.catalog]
            for part in ([merged(plain)] if plain else []) + cat:
                pieces = [replace(part, bucket=bucket, origin=origin, made=min(u.made for u in us))]
                while True:
                    datas = [self._encode(p, ids) for p in pieces]
                    if max(len(d) for d in datas) <= TARGET or len(pieces) >= 1024:
                        break
                    pieces = [q for p in pieces for q in split(p, 2)]
                for data in datas:
                    self._produce(data)
                    n += 1
        self.producer.flush(30.0)
        self.published += n
        return n

    def _encode(self, u: Update, ids) -> bytes:
        self.seq += 1
        return encode(u, self.process, self.seq, u.names if u.ids else ids, self.run)

    def _produce(self, data: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic, data, key=str(self.process).encode(), on_delivery=self._report)
                return
            except BufferError:
                self.producer.poll(0.05)

    def _report(self, err, _msg) -> None:
        if err is not None:
            self.errors.append(err)
            log.error("item sync: an update was not delivered: %s", err)

    # -- read --------------------------------------------------------------------------

    def _read_loop(self) -> None:
        while not self.stopping.is_set():
            msgs = self.consumer.consume(256, 0.05)
            for m in msgs:
                if m.error() is not None:
                    if m.error().code() != KafkaError._PARTITION_EOF:
                        log.error("item sync: %s", m.error().str())
                    continue
                self.receive(m.value(), m.partition(), m.offset())

    def receive(self, data: bytes, partition: int = -1, offset: int = -1) -> bool:
        try:
            proc, run, seq, u = decode(data, self.hub.n_buckets)
        except SyncFormatError as exc:
            self.refused += 1
            log.error("item sync: %s partition %d offset %d refused: %s", self.topic, partition, offset, exc)
            return False
        if proc == self.process:
            return False
        try:
            fits(u, self.hub.all[0]) if self.hub.all else None
        except SyncFormatError as exc:
            self.refused += 1
            log.error("item sync: %s partition %d offset %d refused: %s", self.topic, partition, offset, exc)
            return False
        if seq <= self.seen.get((proc, run), 0):
            return False  # a retry's duplicate
        self.seen[(proc, run)] = seq
        self.hub.deliver(u)
        self.received += 1
        return True

    def close(self) -> None:
        self.stopping.set()
        for t in self._threads:
            t.join(60)
        try:
            self.consumer.close()
        except Exception:  # noqa: BLE001
            pass
        log.info("item sync: published %d message(s), received %d, refused %d", self.published, self.received,
                 self.refused)
