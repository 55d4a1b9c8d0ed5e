"""Bytewax sinks of shard results: metrics, recommendation lists, dead letters.

Each sink here has one partition, so every worker's results meet in one place (Bytewax
routes a ``FixedPartitionedSink``'s items to the worker owning the partition).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Callable, Optional

import orjson
from bytewax.outputs import DynamicSink, FixedPartitionedSink, StatefulSinkPartition, StatelessSinkPartition

from ..metrics import MetricsAccumulator
from .control import STOP
from .replay import RunClock


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
        clock = self.sink.clock
        if clock.first_event is None:  # no source marked it (the live job): the first results do
            clock.first_event = time.perf_counter()
        clock.last_update = time.perf_counter()
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

    def __init__(self, acc: MetricsAccumulator, clock: RunClock, total: int | None = None, progress: bool = True,
                 label: str = "backtest"):
        self.acc = acc
        self.clock = clock
        self.progress = _Progress(total, label, every_s=1.0 if label == "backtest" else 5.0) if progress else None

    def build_part(self, step_id, for_part, resume_state):
        return _MetricsPartition(self)


class _ListsPartition(StatefulSinkPartition):
    def __init__(self, sink: "ListsSink"):
        self.sink = sink
        self.f = open(sink.path, "ab") if sink.path else None

    def write_batch(self, values) -> None:
        s = self.sink
        now = time.time()
        for recs in values:
            for rec in recs:
                rec.pop("_ingest_ts", None)
                rec["emitted_at"] = now
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
    """Recommendation lists (records): to a JSON Lines file, a callback, and/or the latest per user."""

    name = "lists"

    def __init__(self, path: str | None = None, keep_latest: bool = True,
                 on_record: Optional[Callable[[dict], None]] = None):
        self.path = path
        self.keep_latest = keep_latest
        self.on_record = on_record
        self.latest: dict[str, dict] = {}
        self.count = 0
        if path:
            open(path, "wb").close()

    def build_part(self, step_id, for_part, resume_state):
        return _ListsPartition(self)


class _StdoutPartition(StatelessSinkPartition):
    def __init__(self, sink: "StdoutListsSink"):
        self.sink = sink
        self.closed = False

    def write_batch(self, items) -> None:
        if self.closed:
            return
        now = time.time()
        out = sys.stdout
        try:
            for recs in items:
                for rec in recs:
                    ingest = rec.pop("_ingest_ts", None)
                    rec["emitted_at"] = now
                    out.write(orjson.dumps(rec).decode())
                    out.write("\n")
                    if ingest is not None:
                        self.sink.metrics.emit_latency(now - ingest)
                self.sink.metrics.lists_out(len(recs))
            out.flush()
        except BrokenPipeError:
            # the reader went away (``recsys-stream run | head``): stop like on SIGTERM
            self.closed = True
            STOP.set()
            try:
                sys.stdout = open(os.devnull, "w")
            except OSError:
                pass


class StdoutListsSink(DynamicSink):
    """Lists as JSON lines on stdout (the embedded job)."""

    keyed = False

    def __init__(self, metrics):
        self.metrics = metrics

    def build(self, step_id, worker_index, worker_count):
        return _StdoutPartition(self)
