"""The recommender dataflow, built by a factory from a settings object.

    events --(parse)--> batches --route by user--> shards (stateful, keyed) --> results
       '--> dead letters                 catalog --broadcast--^            |--> metrics sink
                                                                         '--> lists sink

``parse`` (for raw Kafka messages) turns a poll's messages into one ``EventBatch`` and
dead letters; ``route`` splits each batch by a stable hash of the user id into key groups
(shards); ``shards`` is a ``stateful_batch`` step whose state per key is a ``Shard``
(embeddings, item-side parameters, id maps) and whose ``on_batch`` runs the prequential
kernels over every event that arrived for it. Catalog operations (an optional items
topic) reach every shard. The backtest plugs a file replay and a metrics sink into this
flow; the Kafka job plugs in Kafka sources and sinks and a refresh policy.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timezone
from typing import Any, Optional

import numpy as np
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from recsys_stream.checkpoint import Checkpointer
from recsys_stream.events import EventBatch
from recsys_stream.faults import fault_point
from recsys_stream.features import FeatureStore
from recsys_stream.io.parse import CatalogParser, EventParser
from recsys_stream.obs import NullMetrics
from recsys_stream.records import list_record
from recsys_stream.refresh import RefreshPolicy
from recsys_stream.routing import UserRouter, shard_keys
from recsys_stream.settings import CheckpointSettings, FlowSettings
from recsys_stream.shard import Shard, ShardResult, occurrence
from recsys_stream.storage import FORMAT, CheckpointError, Store


log = logging.getLogger("recsys_stream.flow")


class Router:
    """Splits a batch into one sub-batch per shard, keeping event order inside each."""

    def __init__(self, n_shards: int):
        self.keys = shard_keys(n_shards)
        self.router = UserRouter(n_shards)

    def __call__(self, batch: EventBatch):
        if len(batch) == 0:
            return []
        if len(self.keys) == 1:
            return [(self.keys[0], ("events", 0, batch))]
        shards = self.router.shards(batch.user)
        order = np.argsort(shards, kind="stable")
        cuts = np.flatnonzero(np.diff(shards[order])) + 1
        out = []
        for grp in np.split(order, cuts):
            j = int(shards[grp[0]])
            out.append((self.keys[j], ("events", j, batch.take(grp))))
        return out


class ShardLogic(StatefulBatchLogic):
    """Bytewax wrapper of a ``Shard``: one kernel call per batch, catalog operations in
    arrival order, de-duplication by event id, the refresh policy's timer, and the
    shard's checkpoints (the Bytewax snapshot is only a handle: shard and generation)."""

    def __init__(self, settings: FlowSettings, features: FeatureStore | None, resume_state: Any, metrics):
        self.settings = settings
        self.features = features
        self.metrics = metrics
        self.shard: Shard | None = None
        iv = settings.refresh_interval_s
        self.policy = RefreshPolicy(iv) if iv is not None else None
        self.store = open_store(settings.checkpoint) if settings.checkpoint is not None else None
        if resume_state is not None:
            self._resume(resume_state)

    def _new_shard(self, index: int) -> None:
        self.shard = Shard(index, self.settings.shard, self.features)
        if self.store is not None:
            # no snapshot names this shard: whatever the store has of it is a crash's leftover
            self.store.drop_shard(index)
            self.shard.checkpointer = Checkpointer(self.shard, self.store, fault_point,
                                                   self.settings.checkpoint.fallback)

    def _resume(self, handle: dict) -> None:
        if self.store is None:
            raise CheckpointError("resuming from a snapshot needs the checkpoint directory it was written to")
        if handle.get("format") != FORMAT:
            raise CheckpointError(f"the snapshot was written in checkpoint format {handle.get('format')}; "
                                  f"this build reads format {FORMAT}")
        index = handle["shard"]
        self.shard = Shard(index, self.settings.shard, self.features)
        ck = Checkpointer(self.shard, self.store, fault_point, self.settings.checkpoint.fallback)
        self.shard.checkpointer = ck
        emit = ck.restore(handle["gen"])
        self.shard.filter.restore(emit)
        if self.policy is not None:
            self.policy.restore(emit)

    def on_batch(self, values):
        out: list = []
        events: list = []
        for kind, index, payload in values:
            if self.shard is None:
                self._new_shard(index)
            if kind == "events":
                events.append(payload)
            else:
                if events:
                    out.append(self._process(events))
                    events = []
                self.shard.catalog(payload)
        if events:
            out.append(self._process(events))
        fault_point("batch.processed")
        return out, StatefulBatchLogic.RETAIN

    def _process(self, batches: list) -> ShardResult:
        sh = self.shard
        b = EventBatch.concat(batches)
        b, replayed = sh.filter.skip_applied(b)
        again = []
        if replayed is not None:
            self.metrics.replayed(len(replayed))
            again = self._replayed(replayed)
        for part, first, top in sh.filter.gap(b):
            log.error("shard %d: after the restore, source partition %d resumed at %d but the state has events up "
                      "to %d only: %d event(s) are missing", sh.index, part, first, top, first - top - 1)
        b, dups = sh.filter.drop_duplicates(b)
        b, held = sh.admit(b)
        self.metrics.duplicates(dups)
        self.metrics.filtered(held)
        if len(b) == 0:
            r = ShardResult.empty(sh.index, [], sh.users.total, len(sh.items))
        elif self.policy is None:
            r = sh.process(b)
        else:
            now = time.time()
            _u, codes = np.unique(b.user, return_inverse=True)
            _occ, first, last = occurrence(codes)
            want, leading = self.policy.choose(b.user, first, last, now)
            r = sh.process(b, want)
            r.lists = self.policy.after(r.lists, leading[want].tolist(), now)
            self.policy.expire(now)
        if again:
            r.lists = again + (r.lists or [])
        r.duplicates = dups
        r.filtered = held
        self.metrics.events_in(r.n)
        self.metrics.update_seconds(r.busy_s, r.n)
        return r

    def _replayed(self, replayed: EventBatch) -> list:
        """Events applied before a crash that the source sends again: not learned twice.
        Their lists may not have reached the sink, so each of their users gets the current
        list again: the state is the one after the user's latest applied event, so it is
        the list (and the version) that event produced; subscribers drop it if they had it."""
        if self.policy is None:
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
        due = self.policy.due(time.time()) if self.policy is not None else []
        if not due or self.shard is None:
            return [], StatefulBatchLogic.RETAIN
        return [self._lists_only(due)], StatefulBatchLogic.RETAIN

    def _lists_only(self, lists: list) -> ShardResult:
        return ShardResult.empty(self.shard.index, lists, self.shard.users.total, len(self.shard.items))

    def on_eof(self):
        # the input ended (drained, or SIGTERM): send the trailing lists still waiting
        if self.policy is None or not self.policy.pending or self.shard is None:
            return [], StatefulBatchLogic.RETAIN
        due = list(self.policy.pending.values())
        self.policy.pending.clear()
        return [self._lists_only(due)], StatefulBatchLogic.RETAIN

    def notify_at(self) -> Optional[datetime]:
        if self.policy is None:
            return None
        t = self.policy.next_due()
        return None if t is None else datetime.fromtimestamp(t, tz=timezone.utc)

    def snapshot(self) -> Any:
        """Write the shard's next generation to LMDB; Bytewax keeps only the handle."""
        if self.store is None or self.shard is None:
            return None
        sh = self.shard
        emit = sh.filter.snapshot()
        if self.policy is not None:
            emit |= self.policy.snapshot(time.time())
        gen = sh.checkpointer.snapshot(emit)
        fault_point("checkpoint.after-commit")
        if self.settings.shard.ttl_s > 0:
            sh.checkpointer.evict_idle(self.settings.shard.ttl_s)
        return {"format": FORMAT, "shard": sh.index, "gen": gen}


_STORES: dict = {}
_STORES_LOCK = threading.Lock()


def open_store(ck: CheckpointSettings) -> Store:
    """One LMDB environment per directory and process, shared by its workers' shards."""
    with _STORES_LOCK:
        st = _STORES.get(ck.path)
        if st is None:
            st = Store(ck.path, map_size=int(ck.map_gb * (1 << 30)))
            _STORES[ck.path] = st
        return st


class _CountingParser:
    """Wraps a parser to count the messages it reads and what goes to the dead letter."""

    def __init__(self, parser, metrics, catalog: bool = False):
        self.parser = parser
        self.metrics = metrics
        self.is_catalog = catalog

    def __call__(self, raw):
        ok, dead = self.parser(raw)
        if self.is_catalog:
            self.metrics.catalog(len(raw), len(dead))
        else:
            self.metrics.consumed(len(raw))
            self.metrics.invalid(len(dead))
        return ok, dead


class _CountingRouter:
    """Counts the events of an already-parsed input (a replay) as consumed."""

    def __init__(self, router, metrics):
        self.router = router
        self.metrics = metrics

    def __call__(self, batch):
        self.metrics.consumed(len(batch))
        return self.router(batch)


def _lists_of(r: ShardResult):
    return r.lists or None


def build_flow(
    settings: FlowSettings,
    source: Source,
    *,
    raw: bool = False,
    catalog_source: Optional[Source] = None,
    metrics_sink: Optional[Sink] = None,
    lists_sink: Optional[Sink] = None,
    dead_letter_sink: Optional[Sink] = None,
    features: FeatureStore | None = None,
    metrics=None,
) -> Dataflow:
    """The dataflow for ``settings``.

    ``source`` yields ``EventBatch`` items, or with ``raw=True`` ``RawBatch``es of JSON
    messages to parse (bad ones go to ``dead_letter_sink``). ``catalog_source`` yields
    ``RawBatch``es of catalog operations. ``lists_sink`` gets lists of list records;
    ``metrics_sink`` gets ``ShardResult``s keyed ``"metrics"``.
    """
    if metrics_sink is None and lists_sink is None:
        raise ValueError("the flow needs a metrics sink, a lists sink, or both")
    metrics = metrics or NullMetrics()
    flow = Dataflow(settings.flow_id)
    inp = op.input("events", flow, source)
    dead_streams = []
    if raw:
        parsed = op.map("parse", inp, _CountingParser(EventParser(settings.max_lateness_s), metrics))
        batches = op.filter_map("parsed_events", parsed, lambda t: t[0])
        dead_streams.append(op.filter_map("parse_errors", parsed, lambda t: t[1] or None))
    else:
        batches = inp
    router = Router(settings.n_shards)
    routed = op.flat_map("route", batches, router if raw else _CountingRouter(router, metrics))
    if catalog_source is not None:
        keys = shard_keys(settings.n_shards)
        cat = op.input("catalog", flow, catalog_source)
        cparsed = op.map("parse_catalog", cat, _CountingParser(CatalogParser(), metrics, catalog=True))
        ops = op.filter_map("catalog_ops", cparsed, lambda t: t[0] or None)
        dead_streams.append(op.filter_map("catalog_errors", cparsed, lambda t: t[1] or None))
        bcast = op.flat_map("broadcast", ops, lambda o: [(key, ("catalog", j, o)) for j, key in enumerate(keys)])
        routed = op.merge("with_catalog", routed, bcast)
    keyed = op.stateful_batch("shards", routed, lambda resume: ShardLogic(settings, features, resume, metrics))
    results = op.map("results", keyed, lambda kv: kv[1])
    if metrics_sink is not None:
        op.output("metrics", op.key_on("metrics_key", results, lambda _r: "metrics"), metrics_sink)
    if lists_sink is not None:
        lists = op.filter_map("lists", results, _lists_of)
        if getattr(lists_sink, "keyed", True):
            lists = op.key_on("lists_key", lists, lambda _l: "lists")
        op.output("lists_out", lists, lists_sink)
    if dead_streams and dead_letter_sink is not None:
        dead = dead_streams[0] if len(dead_streams) == 1 else op.merge("dead_letters", *dead_streams)
        op.output("dead_letter_out", dead, dead_letter_sink)
    return flow
