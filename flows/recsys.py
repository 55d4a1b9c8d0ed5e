"""The recommender dataflow, built by a factory from a settings object.

    events --(parse)--> batches --route by user--> shards (keyed by user group) --> results
       '--> dead letters                                   |                 |--> metrics sink
                                                           | updates         '--> lists sink
                                 catalog --by item bucket--+--> items (keyed by item bucket)

``parse`` (for raw Kafka messages) turns a poll's messages into one ``EventBatch`` and
dead letters; ``route`` splits each batch by a stable hash of the user id into key groups
(shards); ``shards`` is a ``stateful_batch`` step whose state per key is a ``Shard`` (its
users' rows) over its worker's replica of the item side, running the prequential kernels
over every event that arrived for it; the replica's changes go, as one array update per
item bucket, to ``items``, the ``stateful_batch`` step of the buckets' owners, which apply
them and publish what changed back to every replica (``recsys_stream.items``). Catalog
operations (an optional items topic) go to the owner of each item's bucket. The backtest
plugs a file replay and a metrics sink into this flow; the Kafka job plugs in Kafka
sources and sinks and a refresh policy.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Optional

import numpy as np
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.outputs import Sink

from recsys_stream.checkpoint import OWNER_PART, committed, restore_buckets
from recsys_stream.events import EventBatch
from recsys_stream.features import FeatureStore
from recsys_stream.io.parse import CatalogParser, EventParser
from recsys_stream.hub import Hub
from recsys_stream.obs import NullMetrics
from recsys_stream.routing import UserRouter, bucket_keys, bytewax_worker, shard_keys
from recsys_stream.settings import CheckpointSettings, FlowSettings
from recsys_stream.shard import ShardResult, group_runs
from recsys_stream.state import ItemState
from recsys_stream.storage import Store

from .logic import OwnerLogic, ShardLogic, Workers


log = logging.getLogger("recsys_stream.flow")


class Router:
    """Splits a batch by the worker that holds each event's user key group, keeping event
    order: each worker's events go as one batch to the key of one of its groups (the
    lowest), with the events' groups; every other group with events gets a "touch" (so
    that Bytewax snapshots it: it snapshots only the keys that got something in an epoch).
    Keys are placed on workers by Bytewax's hash (``routing.bytewax_worker``)."""

    def __init__(self, n_shards: int, total_workers: int = 1):
        self.keys = shard_keys(n_shards)
        self.router = UserRouter(n_shards)
        self.total = max(total_workers, 1)
        self.worker_of = np.array([bytewax_worker(k, self.total) for k in self.keys], dtype=np.int64)
        self.lead = {}
        for g in range(n_shards):
            self.lead.setdefault(int(self.worker_of[g]), g)

    def __call__(self, batch: EventBatch):
        if len(batch) == 0:
            return []
        G = self.router.shards(batch.user).astype(np.int32)
        if self.total == 1:
            return self._one(0, G, batch)
        W = self.worker_of[G]
        out = []
        for w, idx in group_runs(W):
            out += self._one(w, G[idx], batch if len(idx) == len(batch) else batch.take(idx))
        return out

    def _one(self, w: int, G: np.ndarray, batch: EventBatch) -> list:
        keys = self.keys
        lead = self.lead[w]
        out = [(keys[lead], ("events", lead, (G, batch)))]
        for g in np.unique(G).tolist():
            if g != lead:
                out.append((keys[g], ("touch", g, None)))
        return out


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


def make_hub(settings: FlowSettings) -> Hub:
    """This process's item side: index, owners' store, replicas; restored from the
    committed generations of every item bucket when the flow resumes."""
    sh = settings.shard
    model = sh.make_model()

    def make_state(index):
        return ItemState(model.item_specs(), sh.half_life_days, sh.seed, model.item_pools(), index)

    hub = Hub(make_state, settings.n_buckets, model, processes=settings.processes, process_id=settings.process_id,
              workers=settings.workers, checkpointing=settings.checkpoint is not None)
    ck = settings.checkpoint
    if ck is not None and ck.root and os.path.isdir(os.path.join(ck.root, "recovery")):
        from recsys_stream.inspect import committed_handles

        store = open_store(ck)
        named = committed(store, committed_handles(ck.root))
        gens = {part - OWNER_PART: g for part, g in named.items() if part >= OWNER_PART}
        for part in store.shards():
            if part not in named and store.head(part):
                store.drop_shard(part)  # no snapshot names it (a user group or an item bucket): a crash's leftover
        if gens:
            restore_buckets(store, hub.owner, gens, bucket_meta(settings))
    return hub.start()


def bucket_meta(settings: FlowSettings) -> dict:
    s = settings.shard
    return {"model": s.model, "params": s.params.as_dict(), "seed": s.seed, "n_buckets": settings.n_buckets}


def remote_buckets(settings: FlowSettings):
    """bucket -> is its owner in another process (Bytewax places keys by hash on workers,
    numbered process by process); None in a single process."""
    if settings.processes <= 1:
        return None
    total = settings.processes * settings.workers
    keys = bucket_keys(settings.n_buckets)
    remote = np.array([bytewax_worker(k, total) // settings.workers != settings.process_id for k in keys])
    return lambda b: bool(remote[b])


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
    hub: Hub | None = None,
) -> Dataflow:
    """The dataflow for ``settings``.

    ``source`` yields ``EventBatch`` items, or with ``raw=True`` ``RawBatch``es of JSON
    messages to parse (bad ones go to ``dead_letter_sink``). ``catalog_source`` yields
    ``RawBatch``es of catalog operations. ``lists_sink`` gets lists of list records;
    ``metrics_sink`` gets ``ShardResult``s keyed ``"metrics"``. ``hub``: this process's item
    side (made here by default).
    """
    if metrics_sink is None and lists_sink is None:
        raise ValueError("the flow needs a metrics sink, a lists sink, or both")
    metrics = metrics or NullMetrics()
    hub = hub or make_hub(settings)
    store = open_store(settings.checkpoint) if settings.checkpoint is not None else None
    remote = remote_buckets(settings)
    bkeys = bucket_keys(settings.n_buckets)
    flow = Dataflow(settings.flow_id)
    inp = op.input("events", flow, source)
    dead_streams = []
    if raw:
        parser = EventParser(settings.max_lateness_s, value_range=settings.value_range)
        parsed = op.map("parse", inp, _CountingParser(parser, metrics))
        batches = op.filter_map("parsed_events", parsed, lambda t: t[0])
        dead_streams.append(op.filter_map("parse_errors", parsed, lambda t: t[1] or None))
    else:
        batches = inp
    router = Router(settings.n_shards, settings.processes * settings.workers)
    routed = op.flat_map("route", batches, router if raw else _CountingRouter(router, metrics))
    workers = Workers(settings, features, hub, store)
    keyed = op.stateful_batch("shards", routed, lambda resume: ShardLogic(settings, features, resume, metrics, hub, store,
                                                                          remote, workers))
    out = op.map("shard_out", keyed, lambda kv: kv[1])
    results = op.filter_map("results", out, lambda t: t[1] if t[0] == "res" else None)
    updates = op.filter_map("updates", out, lambda t: (bkeys[t[1].bucket], ("upd", t[1])) if t[0] == "upd" else None)
    if catalog_source is not None:
        cat = op.input("catalog", flow, catalog_source)
        cparsed = op.map("parse_catalog", cat, _CountingParser(CatalogParser(), metrics, catalog=True))
        ops = op.filter_map("catalog_ops", cparsed, lambda t: t[0] or None)
        dead_streams.append(op.filter_map("catalog_errors", cparsed, lambda t: t[1] or None))
        by_bucket = op.flat_map("catalog_by_bucket", ops, _CatalogRouter(hub, bkeys))
        updates = op.merge("with_catalog", updates, by_bucket)
    meta = bucket_meta(settings)
    op.stateful_batch("items", updates, lambda resume: OwnerLogic(settings, resume, hub, store, meta,
                                                                   workers.rounds))
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


class _CatalogRouter:
    """Catalog operations, grouped by the bucket of their item (in order within a bucket)."""

    def __init__(self, hub: Hub, keys):
        self.hub = hub
        self.keys = keys

    def __call__(self, ops):
        from recsys_stream.events import stable_hash64

        B = self.hub.n_buckets
        groups: dict = {}
        for item, o in ops:
            groups.setdefault(stable_hash64(item) % B, []).append((item, o))
        return [(self.keys[b], ("cat", (b, g))) for b, g in groups.items()]
