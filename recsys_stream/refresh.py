"""Which computed lists are sent: at most one per user per interval, leading and trailing edge.

Lists are computed from the state at their triggering event (in the kernel, right after
that event); this policy only chooses which of them to send, by wall-clock time:

- a user who has had nothing sent for ``interval_s`` gets the list of their first event
  at once (leading edge);
- later events inside the interval only replace the user's pending list (the list of
  their latest event), which is sent when the interval ends (trailing edge);

so a burst costs two lists, and the last list a user receives reflects their last event.
With ``interval_s == 0`` the list of each user's last event of every batch is sent.

Per batch the policy needs lists for at most two events per user: the first (a leading
edge, if the user is not throttled) and the last (a trailing candidate). The pending lists
and send times are part of the shard's snapshot, so a restart does not drop a trailing list.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class RefreshPolicy:
    """The policy of one key group (see the module docstring). A batch where user ``a``
    has two events and ``b`` one, at wall time 100 with a 10 s interval:

    >>> p = RefreshPolicy(interval_s=10.0)
    >>> users = np.array(["a", "a", "b"], dtype=object)
    >>> want, leading = p.choose(users, np.array([True, False, True]), np.array([False, True, True]), now=100.0)
    >>> want.tolist(), leading.tolist()
    ([True, True, True], [True, False, True])
    >>> recs = [{"user": "a", "version": 1}, {"user": "a", "version": 2}, {"user": "b", "version": 1}]
    >>> p.after(recs, leading[want].tolist(), now=100.0)  # the leading edges go at once
    [{'user': 'a', 'version': 1}, {'user': 'b', 'version': 1}]
    >>> p.next_due(), p.due(109.0)
    (110.0, [])
    >>> p.due(110.0)  # the trailing edge: a's latest list, when the interval ends
    [{'user': 'a', 'version': 2}]
    """

    interval_s: float
    last_sent: dict = field(default_factory=dict)  # user -> wall time of the last list sent
    pending: dict = field(default_factory=dict)  # user -> list record waiting for the trailing edge

    def choose(self, users: np.ndarray, first: np.ndarray, last: np.ndarray, now: float):
        """Given the batch's user ids and masks of each user's first/last event in it,
        return (want, leading): events whose list to compute, and which of those are
        leading edges (to send at once)."""
        n = len(users)
        want = last.copy()
        leading = np.zeros(n, dtype=bool)
        if self.interval_s <= 0:
            return want, want.copy()
        iv = self.interval_s
        get = self.last_sent.get
        pend = self.pending
        for e in np.flatnonzero(first):
            u = users[e]
            if u not in pend and now - get(u, -math.inf) >= iv:
                leading[e] = True
                want[e] = True
        return want, leading

    def after(self, records: list, leading: list, now: float) -> list:
        """Records computed for the chosen events (in event order) with their leading
        flags; returns the records to send now, keeping the others pending."""
        out = []
        for rec, lead in zip(records, leading):
            u = rec["user"]
            if lead:
                out.append(rec)
                self.last_sent[u] = now
                self.pending.pop(u, None)
            elif self.interval_s <= 0:
                out.append(rec)
                self.last_sent[u] = now
            else:
                self.pending[u] = rec
        if self.interval_s > 0:
            out.extend(self.due(now))
        return out

    def due(self, now: float) -> list:
        """Pending lists whose interval has ended; they are sent and leave the queue."""
        iv = self.interval_s
        ready = [u for u in self.pending if now - self.last_sent.get(u, -math.inf) >= iv]
        out = []
        for u in ready:
            out.append(self.pending.pop(u))
            self.last_sent[u] = now
        return out

    def next_due(self) -> float | None:
        """Wall time at which the next pending list is due, if any."""
        if not self.pending:
            return None
        get = self.last_sent.get
        t = min(get(u, -math.inf) for u in self.pending) + self.interval_s
        return t if math.isfinite(t) else 0.0  # a pending list with no send time is due now

    def snapshot(self, now: float) -> dict:
        """What a checkpoint keeps: the pending lists, and the send times that still
        throttle someone (older than the interval, they no longer do)."""
        iv = self.interval_s
        pend = self.pending
        return {"pending": dict(pend),
                "last_sent": {u: t for u, t in self.last_sent.items() if now - t < iv or u in pend}}

    def restore(self, state: dict) -> None:
        self.pending = dict(state.get("pending", {}))
        self.last_sent = dict(state.get("last_sent", {}))

    def expire(self, now: float) -> None:
        """Forget send times older than the interval (they no longer throttle anyone)."""
        if len(self.last_sent) > 100_000:
            iv = self.interval_s
            self.last_sent = {u: t for u, t in self.last_sent.items() if now - t < iv or u in self.pending}
