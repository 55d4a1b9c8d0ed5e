"""The backtest: the recommender flow with a replay source and a metrics sink.

Prequential evaluation (score each event with the model as it stands, then learn from
it) of a log replayed in event-time order through the same dataflow production runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

from bytewax.run import cli_main

from recsys_stream.events import EventBatch
from recsys_stream.features import FeatureStore
from recsys_stream.io.replay import ReplaySource, RunClock
from recsys_stream.io.sinks import ListsSink, MetricsSink
from recsys_stream.metrics import MetricsAccumulator
from recsys_stream.models import MODELS
from recsys_stream.settings import BacktestSettings

from .recsys import build_flow


@dataclass
class BacktestRun:
    acc: MetricsAccumulator
    clock: RunClock
    lists: ListsSink | None
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def flow_seconds(self) -> float:
        c = self.clock
        if c.first_event is None or c.last_update is None:
            return 0.0
        return c.last_update - c.first_event


def run_backtest(
    log: EventBatch,
    settings: BacktestSettings,
    features: FeatureStore | None = None,
    lists_path: str | None = None,
    keep_lists: bool = False,
) -> BacktestRun:
    """Replay ``log`` through the dataflow and return the accumulated metrics."""
    model = MODELS[settings.flow.shard.model]
    shard = settings.flow.shard
    acc = MetricsAccumulator(
        k=shard.k,
        rating=model.predicts_rating,
        like=model.predicts_like,
    )
    clock = RunClock()
    source = ReplaySource(log, batch_size=settings.batch_size, passes=settings.passes, clock=clock)
    metrics = MetricsSink(acc, clock, total=source.total, progress=settings.progress)
    lists = None
    if shard.lists != "none" or shard.watch:
        lists = ListsSink(path=lists_path, keep_latest=keep_lists)
    fs = settings.flow if settings.flow.workers == settings.workers else replace(settings.flow, workers=settings.workers)
    flow = build_flow(fs, source, metrics_sink=metrics, lists_sink=lists, features=features)
    t0 = time.perf_counter()
    cli_main(flow, workers_per_process=settings.workers)
    return BacktestRun(acc, clock, lists, seconds=time.perf_counter() - t0)
