"""Configuration of the deployed job: a TOML file, environment variables and flags.

Precedence: flags override the environment, which overrides the file, which overrides
the defaults. Every setting has one name in each place:

==========================  ===============================  ==========================
TOML (``[job]`` table)      environment                      flag
==========================  ===============================  ==========================
brokers                     RECSYS_BROKERS                   --brokers
input_topic                 RECSYS_INPUT_TOPIC               --input-topic
output_topic                RECSYS_OUTPUT_TOPIC              --output-topic
dead_letter_topic           RECSYS_DEAD_LETTER_TOPIC         --dead-letter-topic
items_topic                 RECSYS_ITEMS_TOPIC               --items-topic
start                       RECSYS_START                     --start (earliest|latest)
partitions                  RECSYS_PARTITIONS                --partitions
replication                 RECSYS_REPLICATION               --replication
model                       RECSYS_MODEL                     --model
k                           RECSYS_K                         --k
refresh_interval_s          RECSYS_REFRESH_INTERVAL_S        --refresh-interval
workers                     RECSYS_WORKERS                   --workers
checkpoint_dir              RECSYS_CHECKPOINT_DIR            --checkpoint-dir
checkpoint_interval_s       RECSYS_CHECKPOINT_INTERVAL_S     --checkpoint-interval
...                         (see ``FIELDS``)
==========================  ===============================  ==========================

Model parameters live in ``[model.params]`` (or ``RECSYS_PARAM_<NAME>``, or
``--param NAME=VALUE``); librdkafka settings in ``[kafka]`` (or ``RECSYS_KAFKA_<NAME>``
with dots as double underscores, e.g. ``RECSYS_KAFKA_SASL__PASSWORD``, or
``--kafka NAME=VALUE``) and are passed through to every client. Secrets (passwords,
keys, tokens) are never logged: ``RunConfig.describe()`` redacts them.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

SECRET_MARKERS = ("password", "secret", "key", "token", "credential", "jaas")


class ConfigError(ValueError):
    """A setting is missing, malformed or contradictory; the message names it and its source."""


@dataclass(frozen=True)
class RunConfig:
    brokers: str = ""  # empty: the embedded generated stream, lists to stdout
    input_topic: str = "interactions"
    output_topic: str = "recommendations"
    dead_letter_topic: str = "interactions-dead-letter"
    items_topic: str = ""  # optional catalog topic: {"item": ID, "op": "add"|"retire"}
    start: str = "earliest"  # where to start without a checkpoint
    partitions: int = 3  # of topics this job creates
    replication: int = 1
    model: str = "itemknn"
    k: int = 10
    seed: int = 42
    half_life_days: float = 7.0
    refresh_interval_s: float = 1.0  # at most one list per user per interval (0: every batch)
    dedupe_window_s: float = 3600.0  # a repeated event id within this much event time is dropped
    max_lateness_s: float = 0.0  # >0: events this far behind the latest event time go to the dead letter
    evaluate: bool = False  # prequential metrics online (ranking every event costs time)
    batch_size: int = 2000  # messages per source poll
    max_rate: float = 0.0  # throttle the input, messages/s per partition (backfills); 0: as fast as it goes
    workers: int = 1  # Bytewax workers in this process
    process_id: int | None = None  # with addresses: this process in a Bytewax cluster
    addresses: str = ""  # "host:port;host:port" of every process of the cluster
    checkpoint_dir: str = ""  # empty: no recovery
    checkpoint_interval_s: float = 10.0  # the Bytewax epoch: a checkpoint per interval
    recovery_partitions: int = 8  # the most workers a checkpoint can ever be rescaled to
    checkpoint_map_gb: float = 64.0  # LMDB map size (the file grows only as used)
    checkpoint_fallback: bool = False  # resume from an older intact generation if the named one is unusable
    ttl_s: float = 0.0  # users idle this long (event time) leave memory; they stay in the checkpoint
    min_user_events: int = 1  # frequency filter: a user gets state at their Nth event
    metrics_port: int = 0  # Prometheus endpoint (0: off; each process uses port + process id)
    rate: float = 200.0  # embedded stream: events per second
    gen_users: int = 2000
    gen_items: int = 500
    gen_events: int = 0  # embedded stream length (0: endless)
    exit_at_end: bool = False  # Kafka: stop when the input is drained (the end offsets at start)
    log_format: str = "text"  # text or json
    params: Mapping[str, Any] = field(default_factory=dict)
    kafka: Mapping[str, Any] = field(default_factory=dict)

    def validate(self) -> "RunConfig":
        from .models import MODELS

        if self.model not in MODELS:
            raise ConfigError(f"model: unknown {self.model!r}; expected one of {', '.join(MODELS)}")
        if self.start not in ("earliest", "latest"):
            raise ConfigError(f"start: expected 'earliest' or 'latest', got {self.start!r}")
        for name in ("k", "partitions", "replication", "workers", "batch_size", "recovery_partitions",
                     "min_user_events"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.refresh_interval_s < 0 or self.checkpoint_interval_s <= 0:
            raise ConfigError("refresh_interval_s must be >= 0 and checkpoint_interval_s > 0")
        if self.brokers and not self.input_topic:
            raise ConfigError("input_topic: required with brokers")
        if self.ttl_s > 0 and not self.checkpoint_dir:
            raise ConfigError("ttl_s: expired users are kept in the checkpoint, so it needs checkpoint_dir")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format: expected text or json, got {self.log_format!r}")
        return self

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


FIELDS = {f.name: f for f in fields(RunConfig) if f.name not in ("params", "kafka")}


def is_secret(name: str) -> bool:
    low = name.lower()
    return any(m in low for m in SECRET_MARKERS)


def _convert(name: str, value: Any, source: str) -> Any:
    """Convert a raw setting (often a string) to the type of the field's default."""
    default = FIELDS[name].default
    try:
        if name == "process_id":
            return None if value is None or value == "" else int(value)
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, float):
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        kind = type(default).__name__ if default is not None else "int"
        raise ConfigError(f"{name} (from {source}): cannot use {value!r} as {kind}") from None


def from_toml(path: str) -> dict:
    """Settings of a TOML file: ``[job]`` (or top-level keys), ``[model.params]``, ``[kafka]``."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config {path}: not valid TOML: {exc}") from None
    out: dict = {}
    job = doc.get("job", {})
    top = {k: v for k, v in doc.items() if not isinstance(v, dict)}
    for key, value in {**top, **job}.items():
        if key not in FIELDS:
            raise ConfigError(f"{path}: unknown setting {key!r}; known: {', '.join(sorted(FIELDS))}")
        out[key] = _convert(key, value, path)
    model = doc.get("model", {})
    if "name" in model:
        out["model"] = str(model["name"])
    if "params" in model:
        out["params"] = dict(model["params"])
    if "kafka" in doc:
        out["kafka"] = dict(doc["kafka"])
    return out


def from_env(env: Mapping[str, str]) -> dict:
    out: dict = {}
    params: dict = {}
    kafka: dict = {}
    for key, value in env.items():
        if not key.startswith("RECSYS_"):
            continue
        name = key[len("RECSYS_"):]
        if name.startswith("PARAM_"):
            params[name[len("PARAM_"):].lower()] = value
        elif name.startswith("KAFKA_") and not name.startswith("KAFKA_BOOTSTRAP"):
            if name in ("KAFKA_PYTHON", "KAFKA_HOME", "KAFKA_PORT", "KAFKA_DATA", "KAFKA_VERSION",
                        "KAFKA_CONTROLLER_PORT", "KAFKA_HEAP_OPTS", "KAFKA_JVM_OPTS", "KAFKA_START_TIMEOUT",
                        "KAFKA_STOP_TIMEOUT"):
                continue  # settings of scripts/kafka-dev.sh, not of the job
            kafka[name[len("KAFKA_"):].lower().replace("__", ".")] = value
        elif name.lower() in FIELDS:
            out[name.lower()] = _convert(name.lower(), value, f"${key}")
    if params:
        out["params"] = params
    if kafka:
        out["kafka"] = kafka
    return out


def load_config(path: str | None = None, env: Mapping[str, str] | None = None, flags: Mapping | None = None) -> RunConfig:
    """Defaults < file < environment < flags; ``flags`` holds only the flags given."""
    env = os.environ if env is None else env
    merged: dict = {}
    params: dict = {}
    kafka: dict = {}
    layers = [from_toml(path) if path else {}, from_env(env), dict(flags or {})]
    for layer in layers:
        params.update(layer.pop("params", {}) or {})
        kafka.update(layer.pop("kafka", {}) or {})
        for key, value in layer.items():
            if key not in FIELDS:
                raise ConfigError(f"unknown setting {key!r}")
            merged[key] = _convert(key, value, "flags")
    cfg = replace(RunConfig(), **merged, params=params, kafka=kafka)
    return cfg.validate()
