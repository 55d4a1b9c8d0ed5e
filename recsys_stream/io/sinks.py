"""Bytewax sinks of shard results: metrics, recommendation lists, dead letters.

Each sink here has one partition, so every worker's results meet in one place (Bytewax
routes a ``FixedPartitionedSink``'s items to the worker owning the partition).
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Optional

import orjson
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from ..metrics import MetricsAccumulator
from .replay import RunClock


def list_records(lb, model: str, emitted_at: float | None = None):
    """The JSON objects of a ``ListBatch`` (the recommendations topic's value format)."""
    now = time.time() if emitted_at is None else emitted_at
    for j in range(len(lb)):
        yield {
            "user": lb.users[j],
            "items": lb.items[j],
            "scores": lb.scores[j],
            "model": model,
            "version": lb.versions[j],
            "event_ts": lb.event_ts[j],
            "trigger": {"partition": lb.part[j], "offset": lb.offset[j]},
            "emitted_at": now,
        }


class _Progress:
    """Throttled progress line on stderr."""

    def __init__(self, total: int | None, label: str, every_s: float = 1.0):
        self.total = total
        self.label = label
        self.every_s = every_s
        self.t0 = time.perf_counter()
        self.last = 0.0

    def update(self, done: int, final: bool = False) -> None:
        now = time.perf_counter()
        if not final and now - self.last < self.every_s:
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        if self.total:
            msg = f"{self.label}: {done:,}/{self.total:,} events ({100.0 * done / self.total:.0f}%), {rate:,.0f} events/s"
        else:
            msg = f"{self.label}: {done:,} events, {rate:,.0f} events/s"
        print(msg, file=sys.stderr, flush=True)


class _SinglePartitionSink(FixedPartitionedSink):
    name = "single"

    def list_parts(self):
        return [self.name]

    def part_fn(self, item_key: str) -> int:
        return 0


class _MetricsPartition(StatefulSinkPartition):
    def __init__(self, sink: "MetricsSink"):
        self.sink = sink

    def write_batch(self, values) -> None:
        acc = self.sink.acc
        for r in values:
            acc.add(r)
        self.sink.clock.last_update = time.perf_counter()
        if self.sink.progress is not None:
            self.sink.progress.update(acc.events)

    def snapshot(self) -> Any:
        return None

    def close(self) -> None:
        if self.sink.progress is not None:
            self.sink.progress.update(self.sink.acc.events, final=True)


class MetricsSink(_SinglePartitionSink):
    """Accumulates ``ShardResult``s into ``self.acc`` (read it after the run)."""

    name = "metrics"

    def __init__(self, acc: MetricsAccumulator, clock: RunClock, total: int | None = None, progress: bool = True):
        self.acc = acc
        self.clock = clock
        self.progress = _Progress(total, "backtest") if progress else None

    def build_part(self, step_id, for_part, resume_state):
        return _MetricsPartition(self)


class _ListsPartition(StatefulSinkPartition):
    def __init__(self, sink: "ListsSink"):
        self.sink = sink
        self.f = open(sink.path, "ab") if sink.path else None

    def write_batch(self, values) -> None:
        s = self.sink
        for lb in values:
            for rec in list_records(lb, s.model):
                if self.f is not None:
                    self.f.write(orjson.dumps(rec))
                    self.f.write(b"\n")
                if s.keep_latest:
                    s.latest[rec["user"]] = rec
                if s.on_record is not None:
                    s.on_record(rec)
                s.count += 1

    def snapshot(self) -> Any:
        return None

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


class ListsSink(_SinglePartitionSink):
    """Recommendation lists: to a JSON Lines file, a callback, and/or the latest per user."""

    name = "lists"

    def __init__(self, model: str, path: str | None = None, keep_latest: bool = True,
                 on_record: Optional[Callable[[dict], None]] = None):
        self.model = model
        self.path = path
        self.keep_latest = keep_latest
        self.on_record = on_record
        self.latest: dict[str, dict] = {}
        self.count = 0
        if path:
            open(path, "wb").close()

    def build_part(self, step_id, for_part, resume_state):
        return _ListsPartition(self)
