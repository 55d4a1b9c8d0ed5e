"""The deployed job: Kafka in, recommendations out (or the embedded generated stream).

Build it from a ``RunConfig`` (``build_job``), or let Bytewax's runner do it::

    python -m bytewax.run "flows.job:get_flow('recsys.toml')" -w 2

where the TOML file, then ``RECSYS_*`` environment variables, configure it (see
``recsys_stream.config``). ``recsys-stream run`` wraps the same factory with flags, a
SIGTERM handler and the metrics endpoint.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bytewax.dataflow import Dataflow
from bytewax.recovery import RecoveryConfig, init_db_dir

from recsys_stream.config import RunConfig, load_config
from recsys_stream.generate import GeneratorSettings, generate
from recsys_stream.io.kafka import (
    KafkaBatchSource,
    KafkaDeadLetterSink,
    KafkaListsSink,
    ensure_topics,
    topic_partitions,
)
from recsys_stream.io.replay import ReplaySource, RunClock
from recsys_stream.io.sinks import MetricsSink, StdoutListsSink
from recsys_stream.metrics import MetricsAccumulator
from recsys_stream.models import MODELS
from recsys_stream.obs import NullMetrics
from recsys_stream.settings import CheckpointSettings, FlowSettings, shard_settings
from recsys_stream.storage import FORMAT, CheckpointError

from .recsys import build_flow

log = logging.getLogger("recsys_stream.job")


@dataclass
class Job:
    flow: Dataflow
    config: RunConfig
    settings: FlowSettings
    metrics: MetricsSink | None = None  # prequential metrics (embedded stream, or with evaluate)


def prepare_checkpoint_dir(cfg: RunConfig) -> tuple[int, Path]:
    """Create ``<dir>/recovery`` (Bytewax's partitions) and ``<dir>/checkpoint.json`` on
    first start; returns (number of shards, recovery directory). The number of shards is
    fixed when the directory is made: later starts may use other worker counts, and the
    shards move between workers."""
    root = Path(cfg.checkpoint_dir)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lockf:
        fcntl.flock(lockf, fcntl.LOCK_EX)  # processes of one cluster may start together
        meta_path = root / "checkpoint.json"
        rec = root / "recovery"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{meta_path}: checkpoint format {meta.get('format')}; this build reads "
                                      f"format {FORMAT}")
            if meta.get("model") != cfg.model:
                raise CheckpointError(f"{root}: made for model {meta.get('model')!r}, this job runs {cfg.model!r}")
            return int(meta["n_shards"]), rec
        n_shards = cfg.n_shards()
        if cfg.cluster_size() > cfg.recovery_partitions:
            raise CheckpointError(f"{cfg.cluster_size()} workers need at least as many recovery partitions; "
                                  f"raise --recovery-partitions (now {cfg.recovery_partitions})")
        if not rec.exists():
            rec.mkdir()
            init_db_dir(rec, cfg.recovery_partitions)
        meta_path.write_text(json.dumps({"format": FORMAT, "n_shards": n_shards, "model": cfg.model,
                                         "recovery_partitions": cfg.recovery_partitions, "created": time.time()}))
        return n_shards, rec


def recovery_config(cfg: RunConfig) -> RecoveryConfig | None:
    """Bytewax's recovery store: the source positions and each shard's handle."""
    if not cfg.checkpoint_dir:
        return None
    return RecoveryConfig(Path(cfg.checkpoint_dir) / "recovery")


_HELD_LOCKS: list = []


def lock_checkpoint_dir(cfg: RunConfig) -> None:
    """Hold ``<dir>/.worker-<process id>.lock`` for the life of the process: a second
    process with the same checkpoint directory and process id would write the same
    shards' generations concurrently, so it is refused."""
    if not cfg.checkpoint_dir:
        return
    path = Path(cfg.checkpoint_dir) / f".worker-{cfg.process_id or 0}.lock"
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise CheckpointError(f"{cfg.checkpoint_dir} is in use by another worker process (pid {holder}) with "
                              f"process id {cfg.process_id or 0}; stop it first") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    _HELD_LOCKS.append(f)


def build_job(cfg: RunConfig, metrics=None) -> Job:
    metrics = metrics or NullMetrics()
    n_shards = cfg.n_shards()
    checkpoint = None
    if cfg.checkpoint_dir:
        n_shards, _rec = prepare_checkpoint_dir(cfg)
        lock_checkpoint_dir(cfg)
        checkpoint = CheckpointSettings(str(Path(cfg.checkpoint_dir) / "state.lmdb"), map_gb=cfg.checkpoint_map_gb,
                                        fallback=cfg.checkpoint_fallback)
    settings = FlowSettings(shard=shard_settings(cfg), n_shards=n_shards, flow_id="recsys-job",
                            refresh_interval_s=cfg.refresh_interval_s, max_lateness_s=cfg.max_lateness_s,
                            checkpoint=checkpoint)
    if not cfg.brokers:
        # the embedded job: a generated stream, evaluated prequentially as it runs
        settings = replace(settings, shard=replace(settings.shard, evaluate=True))
        gs = GeneratorSettings(events=cfg.gen_events or 200_000, users=cfg.gen_users, items=cfg.gen_items,
                               seed=cfg.seed)
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
    created = ensure_topics(conf, [cfg.output_topic, cfg.dead_letter_topic], cfg.partitions, cfg.replication)
    log.info("input %s has %d partition(s); created %s", cfg.input_topic, n, created or "nothing")
    source = KafkaBatchSource(conf, cfg.input_topic, start=cfg.start, batch_size=cfg.batch_size,
                              exit_at_end=cfg.exit_at_end, metrics=metrics, max_rate=cfg.max_rate)
    catalog = None
    if cfg.items_topic:
        topic_partitions(conf, cfg.items_topic)
        catalog = KafkaBatchSource(conf, cfg.items_topic, start="earliest", batch_size=cfg.batch_size,
                                   exit_at_end=cfg.exit_at_end, metrics=metrics)
    flow = build_flow(settings, source, raw=True, catalog_source=catalog,
                      lists_sink=KafkaListsSink(conf, cfg.output_topic, metrics),
                      dead_letter_sink=KafkaDeadLetterSink(conf, cfg.dead_letter_topic), metrics=metrics)
    return Job(flow, cfg, settings)


def get_flow(config_path: str | None = None) -> Dataflow:
    """Factory for ``python -m bytewax.run``: configuration from the file and ``RECSYS_*``.
    With a checkpoint directory, pass Bytewax ``-r <checkpoint_dir>/recovery -s
    <checkpoint_interval_s>`` (the directory is prepared here)."""
    return build_job(load_config(config_path)).flow
