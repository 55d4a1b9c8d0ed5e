"""Which events of a shard's input are applied: replays, duplicates, the frequency filter.

- **Applied positions**: per source partition, the highest sequence number (offset) the
  state has applied. A source resuming at an older position after a restore sends some
  events again; they are split off, never applied twice (``skip_applied``), and a source
  that resumes *past* the first unapplied event is reported (``gap``).
- **De-duplication**: an event whose id was seen within ``dedupe_window_s`` of event time
  before (or earlier in the batch) is dropped and counted.
- **Admission** (frequency filter): a user gets state only at their ``min_user_events``-th
  event; earlier events are counted (at most ``MAX_WAITING`` users wait; the oldest counts
  are forgotten beyond that).

All three decide which events are applied, so they are part of a checkpoint:
``snapshot`` gives a JSON-able dict and ``restore`` takes it back.
"""

from __future__ import annotations

from collections import deque

import numpy as np

from .events import EventBatch

MAX_WAITING = 1_000_000


class EventFilter:
    def __init__(self, dedupe_window_s: float = 3600.0, min_user_events: int = 1):
        self.dedupe_window_s = dedupe_window_s
        self.min_user_events = min_user_events
        self.applied: dict[int, int] = {}
        self.recent_ids: dict = {}
        self.id_queue: deque = deque()
        self.waiting: dict = {}  # user -> events so far, for users below min_user_events

    # -- replays ------------------------------------------------------------------------

    def skip_applied(self, b: EventBatch) -> tuple[EventBatch, EventBatch | None]:
        """Split off events already applied; returns (new events, replayed events or None)."""
        done = self.applied_mask(b)
        if done is None:
            return b, None
        return b.take(np.flatnonzero(~done)), b.take(np.flatnonzero(done))

    def applied_mask(self, b: EventBatch) -> np.ndarray | None:
        """Which events of ``b`` were applied already (None: none were)."""
        if not self.applied:
            return None
        done = np.zeros(len(b), dtype=bool)
        for part, top in self.applied.items():
            done |= (b.part == part) & (b.seq <= top)
        return done if done.any() else None

    def mark_applied(self, b: EventBatch) -> None:
        for part in np.unique(b.part):
            top = int(b.seq[b.part == part].max())
            if top > self.applied.get(int(part), -1):
                self.applied[int(part)] = top

    # -- duplicates ---------------------------------------------------------------------

    def drop_duplicates(self, b: EventBatch) -> tuple[EventBatch, int]:
        """Remove events whose id was seen within the window (event time) before, or
        earlier in this batch; returns the rest and how many were dropped."""
        keep = self.unique_mask(b)
        if keep is None:
            return b, 0
        dropped = int(len(b) - keep.sum())
        return (b if dropped == 0 else b.take(np.flatnonzero(keep))), dropped

    def unique_mask(self, b: EventBatch) -> np.ndarray | None:
        """Which events of ``b`` are not duplicates (None: ``b`` has no event ids); the
        ids of the kept ones are remembered."""
        if b.eid is None or len(b) == 0:
            return None
        window = self.dedupe_window_s
        seen = self.recent_ids
        q = self.id_queue
        keep = np.ones(len(b), dtype=bool)
        newest = max(float(b.ts.max()), q[-1][0] if q else -np.inf)
        for e, (eid, t) in enumerate(zip(b.eid, b.ts)):
            if eid is None:
                continue
            if eid in seen:
                keep[e] = False
                continue
            seen[eid] = t
            q.append((float(t), eid))
        while q and q[0][0] < newest - window:
            _t, old = q.popleft()
            seen.pop(old, None)
        return keep

    # -- admission ----------------------------------------------------------------------

    def hold_back(self, b: EventBatch, unknown: list) -> tuple[EventBatch, int]:
        """Hold back the events of ``unknown`` users (no state anywhere) below
        ``min_user_events``; returns the events to process and how many were held."""
        keep = self.admit_mask(b, unknown)
        if keep is None:
            return b, 0
        held = int(len(b) - keep.sum())
        return (b if held == 0 else b.take(np.flatnonzero(keep))), held

    def admit_mask(self, b: EventBatch, unknown: list) -> np.ndarray | None:
        """Which events of ``b`` are admitted (None: all are); see ``hold_back``."""
        need = self.min_user_events
        if need <= 1 or not unknown:
            return None
        fresh = set(unknown)
        keep = np.ones(len(b), dtype=bool)
        counts = self.waiting
        for e, u in enumerate(b.user):
            if u in fresh:
                c = counts.get(u, 0) + 1
                if c < need:
                    counts[u] = c
                    keep[e] = False
                    if len(counts) > MAX_WAITING:  # bounded: the oldest counts are forgotten
                        counts.pop(next(iter(counts)))
                else:
                    counts.pop(u, None)
                    fresh.discard(u)  # admitted: this event and the next ones are learned
        return keep

    # -- checkpoints --------------------------------------------------------------------

    def snapshot(self) -> dict:
        return {"applied": {str(p): q for p, q in self.applied.items()},
                "ids": [[t, e] for t, e in self.id_queue], "admission": dict(self.waiting)}

    def restore(self, state: dict) -> None:
        self.applied = {int(p): int(q) for p, q in state.get("applied", {}).items()}
        self.id_queue = deque((float(t), e) for t, e in state.get("ids", []))
        self.recent_ids = {e: t for t, e in self.id_queue}
        self.waiting = dict(state.get("admission", {}))
