"""Settings of the job and the backtest: one declaration serves flags, environment and TOML.

Every setting is a field of ``RunConfig`` (both commands) or ``BacktestConfig`` (the
backtest's own), with its default, its help and the commands that take it declared once,
in the field (``setting``); ``validate`` checks a whole configuration and names the flag
of a bad setting. Reading the settings from the command line, ``RECSYS_*`` environment
variables and a TOML file, and merging them, is ``recsys_stream.configload``'s job.

Secrets (passwords, keys, tokens, OAuth configurations) are never logged:
``RunConfig.describe()`` redacts them.
"""

from __future__ import annotations

import math
import os
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Mapping

from .models import DEFAULT_MODEL, MODELS

RUN, BACKTEST = "run", "backtest"
BOTH = (RUN, BACKTEST)
# the longest list a job computes: lists are arrays of (events x k) per batch
MAX_K = 1000
MAX_SHARDS = 4096  # user key groups (the checkpoint store numbers parts below 0x8000)
MAX_BUCKETS = 4096  # item buckets (parts 0x8000 + bucket)
KEY_GROUPS = 16  # default user key groups of a checkpointed job (its most workers after a rescale)
SECRET_MARKERS = ("password", "secret", "key", "token", "credential", "jaas", "oauthbearer", "pem", "keytab")


class ConfigError(ValueError):
    """A setting is missing, malformed or contradictory; the message names it and its source."""


def opt(help: str, commands=BOTH, flag: str | None = None, metavar: str | None = None, choices=None,
        defaults: Mapping | None = None) -> dict:
    """Field metadata: the help text, the commands that take the setting, its flag (default:
    the name with dashes, ``_s`` dropped), and per-command defaults."""
    return {"help": help, "commands": commands, "flag": flag, "metavar": metavar, "choices": choices,
            "defaults": dict(defaults or {})}


def setting(default, help: str, **kw):
    return field(default=default, metadata=opt(help, **kw))


@dataclass(frozen=True)
class RunConfig:
    # -- what runs: the model, shared by the job and the backtest
    model: str = setting(DEFAULT_MODEL, "online model", choices=tuple(MODELS))
    k: int = setting(10, f"list length / ranking cut-off (at most {MAX_K})")
    seed: int = setting(42, "seed of every random draw")
    half_life_days: float = setting(7.0, "popularity half-life in event-time days; inf for plain counts",
                                    flag="--half-life", metavar="DAYS")
    rank: bool = setting(False, "ranking metrics for mf/ftrl too (slower)")
    workers: int = setting(1, "Bytewax worker threads in this process")
    shards: int = setting(0, "user key groups (0: one per worker of the cluster, at least 16 with a checkpoint "
                          "directory); fixed for a checkpoint's life")
    item_buckets: int = setting(16, "item buckets, each with one owner of its items' values; fixed for a "
                                "checkpoint's life")
    sync_interval_s: float = setting(0.25, "a cluster of processes: owners publish the item updates they applied to "
                                     "the other processes every S seconds (the bound on staleness)", commands=(RUN,),
                                     metavar="S")
    batch_size: int = setting(2000, "messages per poll (run) / events per source batch (backtest; 0: 4096 shared "
                              "by the workers, so a worker sees the others' item updates every 4096 events of the "
                              "stream)", defaults={BACKTEST: 0})
    reasons: bool = setting(False, "each list record carries reasons, one per item (why it is on the list; "
                            "README: Reasons)")
    params: Mapping[str, Any] = field(default_factory=dict, metadata=opt("model parameter", flag="--param",
                                                                         metavar="KEY=VALUE"))
    # -- the generated stream (the embedded job; the backtest without DATA)
    gen_events: int = setting(0, "generated stream: events (run: 0 is endless)", flag=("--gen-events", "--events"),
                              defaults={BACKTEST: 200_000})
    gen_users: int = setting(2000, "generated stream: users", defaults={BACKTEST: 5000})
    gen_items: int = setting(500, "generated stream: items", defaults={BACKTEST: 2000})
    gen_shape: str = setting("groups", "generated stream: groups (taste groups over a small catalog) or zipf "
                             "(Zipf popularity over a large catalog, taste clusters)", choices=("groups", "zipf"))
    gen_groups: int = setting(20, "generated stream: taste groups (zipf: clusters)")
    gen_zipf: float = setting(1.1, "generated stream: popularity exponent")
    rate: float = setting(4000.0, "embedded stream: events per second (0: as fast as it goes)", commands=(RUN,))
    # -- Kafka
    brokers: str = setting("", "bootstrap servers; omitted: the embedded generated stream", commands=(RUN,))
    input_topic: str = setting("interactions", "topic of interaction events", commands=(RUN,))
    output_topic: str = setting("recommendations", "topic the lists go to", commands=(RUN,))
    dead_letter_topic: str = setting("interactions-dead-letter", "topic of messages that are not valid events",
                                     commands=(RUN,))
    items_topic: str = setting("", "catalog operations {item, op: add|retire}", commands=(RUN,))
    start: str = setting("earliest", "without a checkpoint, where to start reading", commands=(RUN,),
                         choices=("earliest", "latest"))
    partitions: int = setting(3, "partitions of the topics the job creates", commands=(RUN,))
    output_compacted: bool = setting(True, "create the output topic with cleanup.policy=compact (it keeps every "
                                     "user's latest list; false: delete retention); an existing topic is left as "
                                     "it is", commands=(RUN,))
    replication: int = setting(1, "replication factor of the topics the job creates", commands=(RUN,))
    max_rate: float = setting(0.0, "throttle the input to N messages/s per partition (backfills); 0: off",
                              commands=(RUN,), metavar="N")
    exit_at_end: bool = setting(False, "stop once the input is drained (the end offsets at start)", commands=(RUN,))
    kafka: Mapping[str, Any] = field(default_factory=dict, metadata=opt("librdkafka setting", commands=(RUN,),
                                                                        metavar="KEY=VALUE"))
    # -- the job's policies
    refresh_interval_s: float = setting(1.0, "at most one list per user per S seconds, leading and trailing edge "
                                        "(0: every batch)", commands=(RUN,), metavar="S")
    dedupe_window_s: float = setting(3600.0, "a repeated event id within S seconds of event time is dropped",
                                     commands=(RUN,), metavar="S")
    max_lateness_s: float = setting(0.0, "events S seconds behind their partition's latest are dead letters (0: off)",
                                    commands=(RUN,), metavar="S")
    evaluate: bool = setting(False, "also compute prequential metrics online (ranking every event costs time)",
                             commands=(RUN,))
    # -- a cluster of processes
    process_id: int | None = setting(None, "this process in a Bytewax cluster (with --addresses)", commands=(RUN,))
    addresses: str = setting("", "host:port;host:port of every process of the cluster", commands=(RUN,))
    # -- checkpoints
    checkpoint_dir: str = setting("", "state in LMDB and Bytewax's recovery store here (empty: no recovery)",
                                  commands=(RUN,))
    checkpoint_interval_s: float = setting(10.0, "a checkpoint (a Bytewax epoch) every S seconds", commands=(RUN,),
                                           metavar="S")
    recovery_partitions: int = setting(8, "Bytewax recovery partitions made at first start", commands=(RUN,))
    checkpoint_map_gb: float = setting(64.0, "LMDB map size (the file grows only as used)", commands=(RUN,))
    checkpoint_fallback: bool = setting(False, "if the checkpoint named by the last snapshot is unusable, resume "
                                        "from an older intact one (the events between are skipped)", commands=(RUN,))
    ttl_s: float = setting(0.0, "users idle this long (event time) leave memory, kept in the checkpoint",
                           commands=(RUN,), flag="--ttl", metavar="S")
    min_user_events: int = setting(1, "frequency filter: a user gets state at their Nth event", commands=(RUN,),
                                   metavar="N")
    # -- operations
    metrics_port: int = setting(0, "Prometheus endpoint port (0: off; each process uses port + process id)",
                                commands=(RUN,))
    log_format: str = setting("text", "log lines as text or one JSON object each", commands=(RUN,),
                              choices=("text", "json"))

    def validate(self, command: str = RUN) -> "RunConfig":
        """Check every setting; the message of a ``ConfigError`` names the flag (and the
        setting's name in TOML and the environment)."""
        try:
            return self._validate(command)
        except ConfigError as exc:
            raise ConfigError(name_flag(str(exc))) from None

    def _validate(self, command: str) -> "RunConfig":
        if self.model not in MODELS:
            raise ConfigError(f"model: unknown {self.model!r}; expected one of {', '.join(MODELS)}")
        if self.start not in ("earliest", "latest"):
            raise ConfigError(f"start: expected 'earliest' or 'latest', got {self.start!r}")
        least = 0 if command == BACKTEST else 1
        if self.batch_size < least:
            raise ConfigError(f"batch_size: must be >= {least}, got {self.batch_size}")
        for name in ("k", "partitions", "replication", "workers", "recovery_partitions",
                     "min_user_events", "gen_users", "gen_items", "gen_groups", "item_buckets"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.gen_groups > self.gen_items:
            raise ConfigError(f"gen_groups: at most gen_items ({self.gen_items}), got {self.gen_groups}")
        if not (math.isfinite(self.gen_zipf) and self.gen_zipf >= 0):
            raise ConfigError(f"gen_zipf: must be a finite number >= 0, got {self.gen_zipf}")
        if self.k > MAX_K:
            raise ConfigError(f"k: at most {MAX_K}, got {self.k}")
        if self.shards > MAX_SHARDS:
            raise ConfigError(f"shards: at most {MAX_SHARDS}, got {self.shards}")
        if self.item_buckets > MAX_BUCKETS:
            raise ConfigError(f"item_buckets: at most {MAX_BUCKETS}, got {self.item_buckets}")
        if command == BACKTEST and self.gen_events < 1:
            raise ConfigError(f"gen_events: must be >= 1, got {self.gen_events}")
        for name in ("shards", "gen_events", "max_rate", "rate", "refresh_interval_s", "dedupe_window_s",
                     "max_lateness_s", "ttl_s", "metrics_port", "sync_interval_s"):
            v = getattr(self, name)
            if not (v >= 0 and (isinstance(v, int) or math.isfinite(v))):
                raise ConfigError(f"{name}: must be a finite number >= 0, got {v}")
        if not (self.half_life_days > 0):
            raise ConfigError(f"half_life_days: must be > 0 (inf for plain counts), got {self.half_life_days}")
        if not (self.checkpoint_interval_s > 0 and math.isfinite(self.checkpoint_interval_s)):
            raise ConfigError(f"checkpoint_interval_s: must be > 0, got {self.checkpoint_interval_s}")
        if not (self.checkpoint_map_gb > 0 and math.isfinite(self.checkpoint_map_gb)):
            raise ConfigError(f"checkpoint_map_gb: must be > 0, got {self.checkpoint_map_gb}")
        if self.metrics_port > 65535:
            raise ConfigError(f"metrics_port: a TCP port is at most 65535, got {self.metrics_port}")
        if self.brokers and not self.input_topic:
            raise ConfigError("input_topic: required with brokers")
        if self.brokers and self.dead_letter_topic in (self.input_topic, self.items_topic):
            raise ConfigError(f"dead_letter_topic: {self.dead_letter_topic!r} is also an input topic; a dead letter "
                              "would be read again and loop")
        if self.brokers and self.output_topic in (self.input_topic, self.items_topic):
            raise ConfigError(f"output_topic: {self.output_topic!r} is also an input topic")
        if self.ttl_s > 0 and not self.checkpoint_dir:
            raise ConfigError("ttl_s: expired users are kept in the checkpoint, so it needs checkpoint_dir")
        addresses = self.address_list()
        if self.process_id is not None:
            if not addresses:
                raise ConfigError("process_id: a process of a cluster needs --addresses (every process's host:port)")
            if not 0 <= self.process_id < len(addresses):
                raise ConfigError(f"process_id: {self.process_id} is not one of the {len(addresses)} processes of "
                                  "--addresses (0 .. n-1)")
        elif addresses and len(addresses) > 1:
            raise ConfigError("addresses: a cluster of processes needs --process-id for this one")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format: expected text or json, got {self.log_format!r}")
        try:
            self.model_params()
        except ValueError as exc:
            raise ConfigError(f"model {self.model!r}: {exc}") from None
        return self

    def address_list(self) -> list[str]:
        return [a.strip() for a in self.addresses.split(";") if a.strip()] if self.addresses else []

    def cluster_size(self) -> int:
        """Total workers of the cluster: workers per process x processes."""
        return self.workers * max(len(self.address_list()), 1)

    def source_batch(self) -> int:
        """Events per source batch of a backtest (``batch_size``, or 4096 shared by the workers)."""
        return self.batch_size or max(256, 4096 // max(self.workers, 1))

    def n_shards(self) -> int:
        """User key groups: ``--shards``, or one per worker of the cluster; with a
        checkpoint directory (where the number is fixed for the checkpoint's life) at least
        ``KEY_GROUPS``, so that a later start can rescale to that many workers."""
        if self.shards:
            return self.shards
        if self.checkpoint_dir:
            return max(KEY_GROUPS, self.cluster_size())
        return self.cluster_size()

    def model_params(self):
        return MODELS[self.model].params_type().replace(**dict(self.params))

    def kafka_config(self) -> dict:
        """librdkafka settings for every client (bootstrap servers plus passthrough)."""
        conf = {str(k): v for k, v in self.kafka.items()}
        conf["bootstrap.servers"] = self.brokers
        return conf

    def describe(self) -> dict:
        """The settings as a dict with secrets redacted (for logs)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["kafka"] = {k: ("***" if is_secret(k) else v) for k, v in self.kafka.items()}
        out["params"] = dict(self.params)
        return out


@dataclass(frozen=True)
class BacktestConfig:
    """The backtest's own settings (its model and run settings are a ``RunConfig``)."""

    data: str = field(default="", metadata=opt("log file or MovieLens folder; omitted: a generated stream",
                                               commands=()))
    format: str = setting("", "input format (default: detected)", commands=(BACKTEST,),
                          choices=("udata", "dat", "mlcsv", "jsonl", "csv"))
    columns: str = setting("", "csv: FIELD=COLUMN mapping, e.g. user=uid,item=sku,ts=time,value=qty",
                           commands=(BACKTEST,))
    delimiter: str = setting(",", "csv delimiter", commands=(BACKTEST,))
    event_type: str = setting("rating", "csv without a type column: the events' type", commands=(BACKTEST,))
    no_sort: bool = setting(False, "replay in file order instead of event-time order", commands=(BACKTEST,))
    user_features: str = setting("", "u.user / users.dat side features", commands=(BACKTEST,), metavar="FILE")
    item_features: str = setting("", "u.item / movies.dat side features", commands=(BACKTEST,), metavar="FILE")
    passes: int = setting(1, "replay the log this many times (speed runs)", commands=(BACKTEST,))
    out: str = setting("", "write metrics.json, curves.csv, plots and report.html here", commands=(BACKTEST,),
                       metavar="DIR")
    window_events: int = setting(0, "events per window of the curves (0: about 50 windows)", commands=(BACKTEST,))
    lists: str = setting("", "write every refreshed list (last event per user per batch) here", commands=(BACKTEST,),
                         metavar="FILE")
    show: int = setting(3, "print the final lists of the N most active users", commands=(BACKTEST,))
    quiet: bool = setting(False, "no progress on stderr", commands=(BACKTEST,))
    no_baseline: bool = setting(False, "generated data: skip the popularity comparison", commands=(BACKTEST,))

    def validate(self) -> "BacktestConfig":
        try:
            return self._validate()
        except ConfigError as exc:
            raise ConfigError(name_flag(str(exc))) from None

    def _validate(self) -> "BacktestConfig":
        if self.passes < 1:
            raise ConfigError(f"passes: must be >= 1, got {self.passes}")
        if self.show < 0 or self.window_events < 0:
            raise ConfigError("show and window_events: must be >= 0")
        if len(self.delimiter) != 1:
            raise ConfigError(f"--delimiter: expected one character, got {self.delimiter!r}")
        if self.out and os.path.exists(self.out) and not os.path.isdir(self.out):
            raise ConfigError(f"out: {self.out} exists and is not a folder")
        if self.lists:
            parent = os.path.dirname(os.path.abspath(self.lists))
            if not os.path.isdir(parent):
                raise ConfigError(f"lists: the folder {parent} does not exist")
            if os.path.isdir(self.lists):
                raise ConfigError(f"lists: {self.lists} is a folder; expected a file name")
            if os.path.islink(self.lists):
                raise ConfigError(f"lists: {self.lists} is a symbolic link; refusing to write through it")
        return self


def field_map(cls) -> dict:
    """Name -> field of a settings dataclass (``RunConfig`` or ``BacktestConfig``)."""
    return {f.name: f for f in fields(cls)}


def name_flag(msg: str) -> str:
    """``"batch_size: must be >= 1"`` -> ``"--batch-size (batch_size): must be >= 1"``."""
    name, sep, rest = msg.partition(":")
    if not sep or " " in name:
        return msg
    f = field_map(RunConfig).get(name)
    if f is not None:
        return f"{flag_of(f)} ({name}, RECSYS_{name.upper()}):{rest}"
    f = field_map(BacktestConfig).get(name)
    return msg if f is None else f"{flag_of(f)}:{rest}"


def flags_for(f) -> tuple[str, ...]:
    """A field's flag names (the first is the one messages use)."""
    md = f.metadata
    flag = md.get("flag")
    if flag:
        return (flag,) if isinstance(flag, str) else tuple(flag)
    name = f.name[:-2] if f.name.endswith("_s") else f.name
    return ("--" + name.replace("_", "-"),)


def flag_of(f) -> str:
    return flags_for(f)[0]


def default_of(f, command: str):
    d = f.metadata.get("defaults", {})
    if command in d:
        return d[command]
    if f.default is not MISSING:
        return f.default
    return f.default_factory()


def is_secret(name: str) -> bool:
    low = name.lower()
    return any(m in low for m in SECRET_MARKERS)
