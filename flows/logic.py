"""The keyed logic of the dataflow's two stateful steps.

- ``ShardLogic`` (step ``shards``, keyed by user key group). Each worker has one ``Shard``
  (``Workers``) holding the users of every key group Bytewax placed on it, over the
  worker's item replica (``items.Replica``). The router sends a worker's events as one
  batch to one of its groups' keys (the lowest), and a "touch" to every other group with
  events in the batch, so that Bytewax snapshots each group whose users changed. The
  logic that gets the events takes in what owners published, selects what each group's
  filter lets through (replays, duplicates, admission), runs the prequential kernels once
  over the batch in event order, and sends the replica's changes to the item owners. A
  group's snapshot writes that group's changed users (its own part of the store).
- ``OwnerLogic`` (step ``items``, keyed by item bucket): applies updates and catalog
  operations to the process's owners' store, publishes what changed, and checkpoints the
  bucket.

A Bytewax snapshot of either is a handle (part and generation); the state is in LMDB.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime, timezone
from typing import Any, Optional

import numpy as np
from bytewax.operators import StatefulBatchLogic

from recsys_stream.checkpoint import BucketCheckpointer, Checkpointer, write_staged
from recsys_stream.events import EventBatch
from recsys_stream.faults import fault_point
from recsys_stream.features import FeatureStore
from recsys_stream.hub import Hub
from recsys_stream.records import list_record
from recsys_stream.refresh import RefreshPolicy
from recsys_stream.settings import FlowSettings
from recsys_stream.shard import Shard, ShardResult, group_runs, occurrence
from recsys_stream.storage import FORMAT, CheckpointError

log = logging.getLogger("recsys_stream.flow")
_TIMING = bool(os.environ.get("RECSYS_SNAPSHOT_TIMING"))  # log each snapshot's time (development aid)


def _check_format(handle: dict) -> None:
    if handle.get("format") != FORMAT:
        raise CheckpointError(f"the snapshot was written in checkpoint format {handle.get('format')}; this build reads "
                              f"format {FORMAT}")


class SnapshotRound:
    """The keys of one step on one worker awoken since its last snapshots, and the
    generations staged for them: Bytewax snapshots, at the end of an epoch, exactly the
    keys awoken in it (any ``on_batch``, ``on_notify`` or ``on_eof``), one after the
    other on the worker's thread; when the last of them is staged, all are written in one
    LMDB transaction (one sync to disk per worker and step, not one per key), before
    Bytewax can store the handles, which it does after the snapshot calls return."""

    def __init__(self, store):
        self.store = store
        self.awoken: set = set()
        self.staged: list = []

    def woke(self, key) -> None:
        if self.staged:
            # the last snapshot of a round never came: Bytewax snapshotted fewer keys than
            # were awoken (it never has); write now rather than never
            log.error("a snapshot round ended with %d generation(s) unwritten (keys %s awoken but not snapshotted); "
                      "writing them now", len(self.staged), sorted(self.awoken)[:5])
            self.awoken.clear()
            self.flush()
        self.awoken.add(key)

    def snapshot(self, key, staged) -> None:
        self.staged.append(staged)
        self.awoken.discard(key)
        if not self.awoken:
            self.flush()

    def flush(self) -> None:
        staged, self.staged = self.staged, []
        write_staged(self.store, staged, fault_point)
        fault_point("checkpoint.after-commit")


class Rounds:
    """A ``SnapshotRound`` per worker thread and step."""

    def __init__(self, store):
        self.store = store
        self.rounds: dict = {}

    def of(self, step: str) -> SnapshotRound:
        key = (threading.get_ident(), step)
        r = self.rounds.get(key)
        if r is None:
            r = self.rounds[key] = SnapshotRound(self.store)
        return r


class Workers:
    """Each worker thread's ``Shard`` (made on first use, over the thread's replica), and
    which worker holds each key group (a group's events must all reach one worker: the
    router and Bytewax place keys by the same hash, and this checks it)."""

    def __init__(self, settings: FlowSettings, features: FeatureStore | None, hub: Hub, store=None):
        self.settings = settings
        self.features = features
        self.hub = hub
        self.lock = threading.Lock()
        self.shards: dict[int, Shard] = {}
        self.replicas: dict[int, Any] = {}
        self.holder: dict[int, int] = {}  # key group -> worker thread
        self.rounds = Rounds(store) if store is not None else None

    def mine(self) -> tuple[Shard, Any]:
        tid = threading.get_ident()
        sh = self.shards.get(tid)
        if sh is None:
            replica = self.hub.replica()
            with self.lock:
                sh = Shard(len(self.shards), self.settings.shard, self.features, items=replica.state,
                           groups=self.settings.n_shards)
                iv = self.settings.refresh_interval_s
                if iv is not None:
                    sh.new_policy = lambda: RefreshPolicy(iv)
                    for grp in sh.groups.values():
                        grp.policy = RefreshPolicy(iv)
                self.shards[tid] = sh
                self.replicas[tid] = replica
        return sh, self.replicas[tid]

    def claim(self, groups) -> None:
        tid = threading.get_ident()
        holder = self.holder
        for g in groups:
            t = holder.get(g)
            if t is None:
                with self.lock:
                    t = holder.setdefault(g, tid)
            if t != tid:
                raise RuntimeError(f"key group {g} reached two workers: the router's placement of keys disagrees "
                                   "with Bytewax's (routing.bytewax_worker)")


class ShardLogic(StatefulBatchLogic):
    """One key group of users (see the module docstring)."""

    def __init__(self, settings: FlowSettings, features: FeatureStore | None, resume_state: Any, metrics, hub: Hub,
                 store, remote_bucket=None, workers: Workers | None = None):
        self.settings = settings
        self.metrics = metrics
        self.hub = hub
        self.store = store
        self.remote_bucket = remote_bucket
        self.workers = workers or Workers(settings, features, hub, store)
        self.shard: Shard | None = None
        self.group: int | None = None
        self.resume_state = resume_state
        if resume_state is not None:
            self._open(int(resume_state["shard"]))

    def _open(self, g: int) -> None:
        self.shard, self.replica = self.workers.mine()
        self.workers.claim([g])
        self.group = g
        grp = self.shard.group(g)
        if self.store is None:
            if self.resume_state is not None:
                raise CheckpointError("resuming from a snapshot needs the checkpoint directory it was written to")
            return
        if grp.checkpointer is None:
            grp.checkpointer = Checkpointer(self.shard, self.store, fault_point, self.settings.checkpoint.fallback,
                                            with_items=False, part=g)
        handle = self.resume_state
        if handle is None:
            # a new group: what the store had of it is a crash's leftover, dropped before the
            # flow started (flows.recsys.make_hub); without the checkpoint root, here
            if not self.settings.checkpoint.root and not grp.filter.applied:
                self.store.drop_shard(g)
            return
        _check_format(handle)
        if grp.filter.applied:
            raise CheckpointError(f"key group {g}: its snapshot arrived after its events")
        emit = grp.checkpointer.restore(handle["gen"])
        grp.filter.restore(emit)
        if grp.policy is not None:
            grp.policy.restore(emit)

    def _woke(self) -> None:
        if self.store is not None and self.workers.rounds is not None:
            self.workers.rounds.of("shards").woke(self.group)

    def on_batch(self, values):
        out = []
        if self.shard is None:
            self._open(values[0][1])
        self._woke()
        for kind, _g, payload in values:
            if kind == "events":
                out += self._events(*payload)
                fault_point("batch.processed")
        return out, StatefulBatchLogic.RETAIN

    def _events(self, G: np.ndarray, batch: EventBatch) -> list:
        self.workers.claim(np.unique(G).tolist())
        replica = self.replica
        replica.absorb()
        out = [("res", self._process(batch, G))]
        if not self.hub.needs_owners():
            return out
        if self.hub.direct:
            for u in replica.flush(split=False):
                self.hub.deliver(u)
            return out
        index = replica.state.index
        for u in replica.flush():
            if self.remote_bucket is not None and self.remote_bucket(u.bucket):
                u = u.as_ids(index)  # its owner is in another process: rows mean nothing there
            out.append(("upd", u))
        return out

    def _process(self, b: EventBatch, G: np.ndarray) -> ShardResult:
        sh = self.shard
        b, G, replayed, dups, held = sh.select(b, G)
        again = []
        if replayed is not None:
            self.metrics.replayed(len(replayed))
            again = self._replayed(replayed)
        self.metrics.duplicates(dups)
        self.metrics.filtered(held)
        if len(b) == 0:
            r = ShardResult.empty(sh.index, [], sh.total_users(), len(sh.items))
        elif self.settings.refresh_interval_s is None:
            r = sh.process(b, G=G)
        else:
            now = time.time()
            _u, codes = np.unique(b.user, return_inverse=True)
            _occ, first, last = occurrence(codes)
            want = last.copy()
            leading = np.zeros(len(b), dtype=bool)
            for g, idx in group_runs(G):
                w, lead = sh.group(g).policy.choose(b.user[idx], first[idx], last[idx], now)
                want[idx], leading[idx] = w, lead
            r = sh.process(b, want, G)
            lists, lead_of, g_of = r.lists, leading[want].tolist(), G[want].tolist()
            sent = []
            for g in dict.fromkeys(g_of):
                sel = [t for t, x in enumerate(g_of) if x == g]
                pol = sh.group(g).policy
                sent += pol.after([lists[t] for t in sel], [lead_of[t] for t in sel], now)
                pol.expire(now)
            r.lists = sent + self._due(now)
        if again:
            r.lists = again + (r.lists or [])
        r.duplicates = dups
        r.filtered = held
        r.staleness = self.replica.take_staleness()
        if len(r.staleness):
            self.metrics.staleness(r.staleness)
        self.metrics.events_in(r.n)
        self.metrics.update_seconds(r.busy_s, r.n)
        return r

    def _policies(self):
        return [g.policy for g in self.shard.groups.values() if g.policy is not None]

    def _due(self, now: float) -> list:
        out = []
        for pol in self._policies():
            out += pol.due(now)
        return out

    def _replayed(self, replayed: EventBatch) -> list:
        """Events applied before a crash that the source sends again: not learned twice.
        Their lists may not have reached the sink, so each of their users gets the current
        list again, with the version of the user's latest applied event (subscribers drop
        it if they had that version; its items reflect the item side as of now)."""
        if self.settings.refresh_interval_s is None:
            return []
        out = []
        for user in dict.fromkeys(replayed.user):
            rec = self.shard.recommend(user)
            if rec["known"]:
                last = np.flatnonzero(replayed.user == user)[-1]
                out.append(list_record(user, rec["items"], rec["scores"], self.settings.shard.model, rec["version"],
                                       replayed.ts[last], replayed.part[last], replayed.offset[last]))
        return out

    def on_notify(self):
        if self.shard is not None:
            self._woke()
        if self.shard is None or self.settings.refresh_interval_s is None:
            return [], StatefulBatchLogic.RETAIN
        due = self.shard.group(self.group).policy.due(time.time())
        if not due:
            return [], StatefulBatchLogic.RETAIN
        return [("res", self._lists_only(due))], StatefulBatchLogic.RETAIN

    def _lists_only(self, lists: list) -> ShardResult:
        return ShardResult.empty(self.shard.index, lists, self.shard.total_users(), len(self.shard.items))

    def on_eof(self):
        # the input ended (drained, or SIGTERM): send this group's trailing lists still waiting
        if self.shard is not None:
            self._woke()
        if self.shard is None or self.settings.refresh_interval_s is None:
            return [], StatefulBatchLogic.RETAIN
        pol = self.shard.group(self.group).policy
        if not pol.pending:
            return [], StatefulBatchLogic.RETAIN
        due = list(pol.pending.values())
        pol.pending.clear()
        return [("res", self._lists_only(due))], StatefulBatchLogic.RETAIN

    def notify_at(self) -> Optional[datetime]:
        if self.shard is None or self.settings.refresh_interval_s is None:
            return None
        pol = self.shard.group(self.group).policy
        t = pol.next_due()
        return None if t is None else datetime.fromtimestamp(t, tz=timezone.utc)

    def snapshot(self) -> Any:
        """Write the group's next generation to LMDB; Bytewax keeps only the handle."""
        if self.store is None or self.shard is None:
            return None
        grp = self.shard.group(self.group)
        emit = grp.filter.snapshot()
        if grp.policy is not None:
            emit |= grp.policy.snapshot(time.time())
        t0 = time.perf_counter()
        staged = grp.checkpointer.stage(emit)
        self.workers.rounds.of("shards").snapshot(self.group, staged)
        if _TIMING:
            log.info("snapshot group %d: %.2f ms", self.group, 1e3 * (time.perf_counter() - t0))
        if self.settings.shard.ttl_s > 0:
            grp.checkpointer.evict_idle(self.settings.shard.ttl_s)
        return {"format": FORMAT, "shard": self.group, "gen": staged.gen}


class OwnerLogic(StatefulBatchLogic):
    """The owner of an item bucket (see the module docstring). Its state lives in the
    process's owners' store (``Hub.owner``), loaded from the committed generations when
    the flow was built (``checkpoint.restore_buckets``), so replicas start from it before
    any user shard runs."""

    def __init__(self, settings: FlowSettings, resume_state: Any, hub: Hub, store, meta: dict,
                 rounds: Rounds | None = None):
        self.settings = settings
        self.hub = hub
        self.store = store
        self.meta = meta
        self.rounds = rounds if rounds is not None else (Rounds(store) if store is not None else None)
        self.bucket: int | None = None
        self.checkpointer = None
        if resume_state is not None:
            _check_format(resume_state)
            self._open(int(resume_state["bucket"]))

    def _open(self, bucket: int) -> None:
        self.bucket = bucket
        if self.store is not None:
            self.checkpointer = BucketCheckpointer(self.store, self.hub.owner, bucket, self.meta, fault_point)

    def _woke(self) -> None:
        if self.rounds is not None:
            self.rounds.of("items").woke(self.bucket)

    def on_batch(self, values):
        if self.bucket is None:
            kind, payload = values[0]
            self._open(payload.bucket if kind == "upd" else payload[0])
        self._woke()
        updates = []
        for kind, payload in values:
            if kind == "upd":
                updates.append(payload)
            else:
                if updates:
                    self.hub.forward(self.hub.apply(updates))
                    updates = []
                self.hub.forward([self.hub.owner.catalog(payload[0], payload[1])], force=True)
        if updates:
            self.hub.forward(self.hub.apply(updates))
        return [], StatefulBatchLogic.RETAIN

    def on_eof(self):
        if self.bucket is not None:
            self._woke()  # Bytewax snapshots every key it calls at the end
        return [], StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        if self.checkpointer is None:
            return None
        t0 = time.perf_counter()
        staged = self.checkpointer.stage()
        self.rounds.of("items").snapshot(self.bucket, staged)
        if _TIMING:
            log.info("snapshot bucket %d: %.2f ms", self.bucket, 1e3 * (time.perf_counter() - t0))
        return {"format": FORMAT, "bucket": self.bucket, "gen": staged.gen}
