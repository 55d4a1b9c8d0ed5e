"""The deployed job: Kafka in, recommendations out (or the embedded generated stream).

Build it from a ``RunConfig`` (``build_job``), or let Bytewax's runner do it::

    python -m bytewax.run "flows.job:get_flow('recsys.toml')" -w 2

where the TOML file, then ``RECSYS_*`` environment variables, configure it (see
``recsys_stream.configload``). ``recsys-stream run`` wraps the same factory with flags, a
SIGTERM handler and the metrics endpoint.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

from bytewax.dataflow import Dataflow

from recsys_stream.ckdir import lock_checkpoint_dir, preflight, prepare_checkpoint_dir, recovery_config  # noqa: F401
from recsys_stream.config import RunConfig
from recsys_stream.configload import load_config
from recsys_stream.generate import GeneratorSettings, generate
from recsys_stream.io.kafka import (
    KafkaBatchSource,
    KafkaDeadLetterSink,
    KafkaListsSink,
    ensure_topics,
    topic_config,
    topic_partitions,
)
from recsys_stream.io.itemsync import ItemSync, sync_topic_name
from recsys_stream.io.replay import ReplaySource, RunClock
from recsys_stream.io.sinks import MetricsSink, StdoutListsSink
from recsys_stream.metrics import MetricsAccumulator
from recsys_stream.models import MODELS
from recsys_stream.obs import NullMetrics
from recsys_stream.settings import CheckpointSettings, FlowSettings, shard_settings

from .recsys import build_flow, make_hub

log = logging.getLogger("recsys_stream.job")


@dataclass
class Job:
    flow: Dataflow
    config: RunConfig
    settings: FlowSettings
    metrics: MetricsSink | None = None  # prequential metrics (embedded stream, or with evaluate)
    sync: ItemSync | None = None  # a cluster of processes: the item side's topic

    def close(self) -> None:
        """After the flow stopped: publish what is left and stop the sync threads."""
        if self.sync is not None:
            self.sync.close()


def flow_settings(cfg: RunConfig) -> FlowSettings:
    """The flow's settings for a run (checkpoint directory prepared and locked)."""
    n_shards = cfg.n_shards()
    checkpoint = None
    if cfg.checkpoint_dir:
        n_shards, _rec = prepare_checkpoint_dir(cfg)
        lock_checkpoint_dir(cfg)
        preflight(cfg)  # a resume that would fail inside a worker fails here, in one line
        checkpoint = CheckpointSettings(str(Path(cfg.checkpoint_dir) / "state.lmdb"), map_gb=cfg.checkpoint_map_gb,
                                        fallback=cfg.checkpoint_fallback, root=str(cfg.checkpoint_dir))
    processes = max(len(cfg.address_list()), 1)
    return FlowSettings(shard=shard_settings(cfg), n_shards=n_shards, n_buckets=cfg.item_buckets,
                        processes=processes, workers=cfg.workers, process_id=cfg.process_id or 0,
                        value_range=MODELS[cfg.model](cfg.model_params()).value_range(), flow_id="recsys-job",
                        refresh_interval_s=cfg.refresh_interval_s, max_lateness_s=cfg.max_lateness_s,
                        checkpoint=checkpoint)


def build_job(cfg: RunConfig, metrics=None) -> Job:
    metrics = metrics or NullMetrics()
    settings = flow_settings(cfg)
    if not cfg.brokers and settings.processes > 1:
        raise ValueError("addresses: the processes of a cluster share the item side through Kafka; the embedded "
                         "job runs in one process (give --brokers, or drop --addresses)")
    if not cfg.brokers:
        # the embedded job: a generated stream, evaluated prequentially as it runs
        settings = replace(settings, shard=replace(settings.shard, evaluate=True))
        gs = GeneratorSettings(events=cfg.gen_events or 200_000, users=cfg.gen_users, items=cfg.gen_items,
                               seed=cfg.seed, shape=cfg.gen_shape, groups=cfg.gen_groups, zipf=cfg.gen_zipf)
        events = generate(gs)
        passes = 1 if cfg.gen_events else 1_000_000  # endless: replay again with later event times
        clock = RunClock()
        source = ReplaySource(events, batch_size=cfg.batch_size, passes=passes, rate=cfg.rate, stoppable=True,
                              clock=clock)
        model = MODELS[cfg.model]
        acc = MetricsAccumulator(k=cfg.k, rating=model.predicts_rating, like=model.predicts_like)
        msink = MetricsSink(acc, clock, total=cfg.gen_events or None, progress=True, label="run")
        flow = build_flow(settings, source, lists_sink=StdoutListsSink(metrics), metrics_sink=msink, metrics=metrics)
        return Job(flow, cfg, settings, metrics=msink)
    conf = cfg.kafka_config()
    n = topic_partitions(conf, cfg.input_topic)
    limit = topic_config(conf, cfg.input_topic, "max.message.bytes")
    dl_bytes = (int(limit) if limit and limit.isdigit() else 1048588) + 65536  # an input message and its headers
    configs = {cfg.dead_letter_topic: {"max.message.bytes": str(dl_bytes)}}
    if cfg.output_compacted and cfg.output_topic != cfg.dead_letter_topic:
        # keyed by user: compaction keeps every user's latest list (``recsys-stream lists``)
        configs[cfg.output_topic] = {"cleanup.policy": "compact"}
    created = ensure_topics(conf, [cfg.output_topic, cfg.dead_letter_topic], cfg.partitions, cfg.replication,
                            configs=configs)
    log.info("input %s has %d partition(s); created %s", cfg.input_topic, n, created or "nothing")
    if cfg.output_topic in created:
        log.info("output topic %s created with cleanup.policy=%s", cfg.output_topic,
                 configs.get(cfg.output_topic, {}).get("cleanup.policy", "the broker's default (log.cleanup.policy)"))
    else:
        log.info("output topic %s exists: left as it is, cleanup.policy=%s", cfg.output_topic,
                 topic_config(conf, cfg.output_topic, "cleanup.policy") or "unknown (cannot be read)")
    hub = make_hub(settings)
    sync = None
    if settings.processes > 1:
        sync = ItemSync(conf, sync_topic_name(cfg.output_topic), hub, cfg.sync_interval_s, settings.process_id,
                        settings.processes, cfg.replication, metrics)
        sync.start()  # before the cluster starts: its offsets are where this run's updates begin
    source = KafkaBatchSource(conf, cfg.input_topic, start=cfg.start, batch_size=cfg.batch_size,
                              exit_at_end=cfg.exit_at_end, metrics=metrics, max_rate=cfg.max_rate)
    catalog = None
    if cfg.items_topic:
        topic_partitions(conf, cfg.items_topic)
        catalog = KafkaBatchSource(conf, cfg.items_topic, start="earliest", batch_size=cfg.batch_size,
                                   exit_at_end=cfg.exit_at_end, metrics=metrics)
    msink = None
    if cfg.evaluate:
        # prequential metrics of the live job: every shard's results go to one sink partition
        # (one worker of the cluster), printed when the job ends
        settings = replace(settings, shard=replace(settings.shard, evaluate=True))
        model = MODELS[cfg.model]
        acc = MetricsAccumulator(k=cfg.k, rating=model.predicts_rating, like=model.predicts_like)
        msink = MetricsSink(acc, RunClock(), progress=False, label="run")
    flow = build_flow(settings, source, raw=True, catalog_source=catalog,
                      lists_sink=KafkaListsSink(conf, cfg.output_topic, metrics),
                      dead_letter_sink=KafkaDeadLetterSink(conf, cfg.dead_letter_topic), metrics=metrics, hub=hub,
                      metrics_sink=msink)
    return Job(flow, cfg, settings, metrics=msink, sync=sync)


def get_flow(config_path: str | None = None) -> Dataflow:
    """Factory for ``python -m bytewax.run``: configuration from the file and ``RECSYS_*``.
    With a checkpoint directory, pass Bytewax ``-r <checkpoint_dir>/recovery -s
    <checkpoint_interval_s>`` (the directory is prepared here)."""
    return build_job(load_config(config_path)).flow
