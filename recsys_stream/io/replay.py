"""A Bytewax source that replays an in-memory log in batches (backtests, the demo).

The log is one ``EventBatch`` in replay order; each ``next_batch`` hands out the next
``batch_size`` events as one item, so the dataflow moves arrays, not single events. The
partition's resume state is its position, so a replay is resumable like any Bytewax
source. ``passes > 1`` replays the log again after its end (event times shifted past the
previous pass, sequence numbers continuing), for speed measurements on long streams.
``rate`` paces the replay to a number of events per second (0: as fast as possible).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Optional

import numpy as np
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from ..events import EventBatch
from .control import STOP


@dataclass
class RunClock:
    """Wall-clock marks shared by the source and the sinks of one in-process run."""

    first_event: float | None = None  # perf_counter when the first batch entered the flow
    last_update: float | None = None  # perf_counter of the last metric update


class _ReplayPartition(StatefulSourcePartition):
    def __init__(self, log: EventBatch, batch_size: int, passes: int, rate: float, pos: int, clock: RunClock | None,
                 stoppable: bool):
        self.log = log
        self.n = len(log)
        self.batch_size = batch_size
        self.total = self.n * passes
        self.rate = rate
        self.pos = pos
        self.clock = clock
        self.span = float(log.ts[-1] - log.ts[0]) + 1.0 if self.n else 1.0
        self._t0 = None
        self._pos0 = pos
        self.stoppable = stoppable

    def next_batch(self):
        if self.pos >= self.total or (self.stoppable and STOP.is_set()):
            raise StopIteration()
        if self.rate > 0:
            now = time.monotonic()
            if self._t0 is None:
                self._t0 = now
            due = self._t0 + (self.pos - self._pos0) / self.rate
            if now < due:
                return []
        p, start = divmod(self.pos, self.n)
        stop = min(start + self.batch_size, self.n)
        if self.rate > 0:
            # pace in small steps: at most ~20 ms of events per batch
            stop = min(stop, start + max(1, int(self.rate * 0.02)))
        chunk = self.log.slice(start, stop)
        if p:
            chunk.ts = chunk.ts + p * self.span
            chunk.seq = chunk.seq + p * self.n
        chunk.ingest = np.full(len(chunk), time.time())
        self.pos += stop - start
        if self.clock is not None and self.clock.first_event is None:
            self.clock.first_event = time.perf_counter()
        return [chunk]

    def next_awake(self) -> Optional[datetime]:
        if self.rate > 0 and self._t0 is not None and self.pos < self.total:
            wait = self._t0 + (self.pos - self._pos0) / self.rate - time.monotonic()
            if wait > 0:
                return datetime.now(timezone.utc) + timedelta(seconds=wait)
        return None

    def snapshot(self) -> int:
        return self.pos


class ReplaySource(FixedPartitionedSource):
    """Replays ``log`` (see module docstring) from one partition named ``replay``."""

    def __init__(self, log: EventBatch, batch_size: int = 4096, passes: int = 1, rate: float = 0.0,
                 clock: RunClock | None = None, stoppable: bool = False):
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if passes < 1:
            raise ValueError("passes must be >= 1")
        self.log = log
        self.batch_size = batch_size
        self.passes = passes
        self.rate = rate
        self.clock = clock
        self.stoppable = stoppable  # end the input when ``control.STOP`` is set (the live job)

    @property
    def total(self) -> int:
        return len(self.log) * self.passes

    def list_parts(self):
        return ["replay"]

    def build_part(self, step_id, for_part, resume_state):
        return _ReplayPartition(self.log, self.batch_size, self.passes, self.rate, resume_state or 0, self.clock,
                                self.stoppable)

