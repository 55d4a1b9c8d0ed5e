"""The recommender dataflow, built by a factory from a settings object.

    events (batches) --route by user--> shards (stateful, keyed) --> results
                                                                  |--> metrics sink
                                                                  '--> lists sink

``route`` splits each batch by a stable hash of the user id into key groups (shards);
``shards`` is a ``stateful_batch`` step whose state per key is a ``Shard`` (embeddings,
item-side parameters, id maps) and whose ``on_batch`` runs the prequential kernels over
all events that arrived for it. The backtest plugs a file replay and a metrics sink into
this same flow; the Kafka job plugs in Kafka.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from recsys_stream.events import EventBatch
from recsys_stream.features import FeatureStore
from recsys_stream.routing import UserRouter, shard_keys
from recsys_stream.shard import Shard, ShardResult, ShardSettings


@dataclass(frozen=True)
class FlowSettings:
    """What the factory needs; validated and immutable."""

    shard: ShardSettings = ShardSettings()
    n_shards: int = 1  # key groups of users; fixed for the life of a checkpoint
    flow_id: str = "recsys"

    def __post_init__(self):
        if self.n_shards < 1:
            raise ValueError(f"n_shards must be >= 1, got {self.n_shards}")


class Router:
    """Splits a batch into one sub-batch per shard, keeping event order inside each."""

    def __init__(self, n_shards: int):
        self.keys = shard_keys(n_shards)
        self.router = UserRouter(n_shards)

    def __call__(self, batch: EventBatch):
        if len(batch) == 0:
            return []
        if len(self.keys) == 1:
            return [(self.keys[0], (0, batch))]
        shards = self.router.shards(batch.user)
        order = np.argsort(shards, kind="stable")
        s_sorted = shards[order]
        cuts = np.flatnonzero(np.diff(s_sorted)) + 1
        out = []
        for grp in np.split(order, cuts):
            j = int(shards[grp[0]])
            out.append((self.keys[j], (j, batch.take(grp))))
        return out


class ShardLogic(StatefulBatchLogic):
    """Bytewax wrapper of a ``Shard``: one kernel call per batch of events."""

    def __init__(self, settings: FlowSettings, features: FeatureStore | None, resume_state: Any):
        self.settings = settings
        self.features = features
        self.shard: Shard | None = None

    def on_batch(self, values):
        index = values[0][0]
        if self.shard is None:
            self.shard = Shard(index, self.settings.shard, self.features)
        batch = EventBatch.concat([v[1] for v in values])
        return [self.shard.process(batch)], StatefulBatchLogic.RETAIN

    def snapshot(self) -> Any:
        # Recovery of the model state lives in LMDB (a later step); Bytewax keeps nothing.
        return None


def _lists_of(r: ShardResult):
    return r.lists if r.lists is not None and len(r.lists) else None


def build_flow(
    settings: FlowSettings,
    source: Source,
    *,
    metrics_sink: Optional[Sink] = None,
    lists_sink: Optional[Sink] = None,
    features: FeatureStore | None = None,
) -> Dataflow:
    """The dataflow for ``settings``, reading ``source`` (which yields ``EventBatch`` items)."""
    if metrics_sink is None and lists_sink is None:
        raise ValueError("the flow needs a metrics sink, a lists sink, or both")
    flow = Dataflow(settings.flow_id)
    batches = op.input("events", flow, source)
    routed = op.flat_map("route", batches, Router(settings.n_shards))
    keyed = op.stateful_batch("shards", routed, lambda resume: ShardLogic(settings, features, resume))
    results = op.map("results", keyed, lambda kv: kv[1])
    if metrics_sink is not None:
        op.output("metrics", op.key_on("metrics_key", results, lambda _r: "metrics"), metrics_sink)
    if lists_sink is not None:
        lists = op.filter_map("lists", results, _lists_of)
        op.output("lists_out", op.key_on("lists_key", lists, lambda _l: "lists"), lists_sink)
    return flow
