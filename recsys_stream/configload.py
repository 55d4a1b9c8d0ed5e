"""Building a ``RunConfig`` from its sources: flags, environment and TOML, merged as

    flags > RECSYS_* environment > TOML file (``--config``) > defaults

The settings themselves (defaults, help, commands) are declared once, in
``recsys_stream.config``; everything here is derived from those declarations.
``add_flags`` makes the command-line options (``--input-topic`` for ``input_topic``),
``from_env`` reads ``RECSYS_<NAME>``, ``from_toml`` the ``[job]`` table of a TOML file, and
``load_config`` merges them (with the defaults of the command) and validates the result.

Model parameters live in ``[model.params]`` (or ``RECSYS_PARAM_<NAME>``, or ``--param
NAME=VALUE``, or a shortcut flag such as ``--dim``); librdkafka settings in ``[kafka]`` (or
``RECSYS_KAFKA_<NAME>`` with dots as double underscores, e.g. ``RECSYS_KAFKA_SASL__PASSWORD``,
or ``--kafka NAME=VALUE``) and are passed through to every client.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import fields, replace
from typing import Any, Mapping

from .config import RUN, BacktestConfig, ConfigError, RunConfig, default_of, field_map, flag_of, flags_for

# model parameters with a flag of their own (``--dim`` is ``--param dim=...``)
PARAM_FLAGS = {"dim": int, "lr": float, "reg": float, "negatives": int, "window": int, "recent": int,
               "like_threshold": float, "quantized": bool, "adagrad": bool}

# the settings with one value each (``params`` and ``kafka`` are tables)
FIELDS = {n: f for n, f in field_map(RunConfig).items() if n not in ("params", "kafka")}


def add_flags(parser, cls, command: str) -> None:
    """Add an option per field of ``cls`` that ``command`` takes; options left out by the
    user stay None, so only what was given overrides the environment and the file."""
    for f in fields(cls):
        md = f.metadata
        if command not in md.get("commands", ()):
            continue
        help_ = md.get("help", "")
        default = default_of(f, command)
        names = flags_for(f)
        if f.name in ("params", "kafka"):
            parser.add_argument(*names, dest=f.name, action="append", default=None, metavar=md.get("metavar"),
                                help=f"{help_} (repeatable)")
            continue
        kind = type(default) if default is not None else int
        if kind is bool:
            parser.add_argument(*names, dest=f.name, action="store_true", default=None, help=help_)
            continue
        if default not in ("", None, 0, 0.0) and not isinstance(default, bool):
            help_ += f" (default {default})"
        parser.add_argument(*names, dest=f.name, type=_parser_type(kind, names[0]), default=None,
                            choices=md.get("choices"), metavar=md.get("metavar"), help=help_)


def _parser_type(kind, flag):
    def conv(text):
        try:
            if kind is float:
                return float(text)
            if kind is int:
                return int(text)
        except ValueError:
            import argparse

            raise argparse.ArgumentTypeError(f"expected {'a number' if kind is float else 'an integer'}, got "
                                             f"{text!r}") from None
        return text

    conv.__name__ = kind.__name__
    return conv


def _convert(name: str, value: Any, source: str, cls=RunConfig) -> Any:
    """Convert a raw setting (often a string) to the type of the field's default."""
    f = field_map(cls)[name]
    default = f.default
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
    except (TypeError, ValueError, OverflowError):
        kind = type(default).__name__ if default is not None else "int"
        raise ConfigError(f"{name} (from {source}): cannot use {value!r} as {kind}") from None


def from_toml(path: str) -> dict:
    """Settings of a TOML file: ``[job]`` (or top-level keys), ``[model.params]``, ``[kafka]``."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"--config {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"--config {path}: is a folder, expected a TOML file") from None
    except PermissionError:
        raise ConfigError(f"--config {path}: not readable") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
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


_SCRIPT_ENV = ("KAFKA_PYTHON", "KAFKA_HOME", "KAFKA_PORT", "KAFKA_DATA", "KAFKA_VERSION", "KAFKA_CONTROLLER_PORT",
               "KAFKA_HEAP_OPTS", "KAFKA_JVM_OPTS", "KAFKA_START_TIMEOUT", "KAFKA_STOP_TIMEOUT")


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
            if name in _SCRIPT_ENV:
                continue  # settings of scripts/kafka-dev.sh, not of the job
            kafka[name[len("KAFKA_"):].lower().replace("__", ".")] = value
        elif name.lower() in FIELDS:
            out[name.lower()] = _convert(name.lower(), value, f"${key}")
    if params:
        out["params"] = params
    if kafka:
        out["kafka"] = kafka
    return out


def load_config(path: str | None = None, env: Mapping[str, str] | None = None, flags: Mapping | None = None,
                command: str = RUN) -> RunConfig:
    """Defaults (of ``command``) < file < environment < flags; ``flags`` holds only the
    flags given."""
    env = os.environ if env is None else env
    merged: dict = {n: default_of(f, command) for n, f in FIELDS.items() if f.metadata.get("defaults")}
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
    return cfg.validate(command)


def kv_pairs(items: list[str] | None, flag: str) -> dict:
    """``["a=1", "b=2"]`` from a repeatable ``--flag KEY=VALUE`` option."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        if not k.strip():
            raise ConfigError(f"{flag} {item!r}: the key is empty")
        out[k.strip().replace("-", "_") if flag == "--param" else k.strip()] = v.strip()
    return out


def flags_of(args, cls=RunConfig, command: str = RUN) -> dict:
    """The settings given on the command line (argparse ``args``), for ``load_config``."""
    out = {}
    for f in fields(cls):
        if command not in f.metadata.get("commands", ()):
            continue
        v = getattr(args, f.name, None)
        if v is None:
            continue
        if f.name in ("params", "kafka"):
            v = kv_pairs(v, flag_of(f))
        out[f.name] = v
    shortcuts = {name: getattr(args, name) for name in PARAM_FLAGS if getattr(args, name, None) is not None}
    if shortcuts:
        out["params"] = {**out.get("params", {}), **shortcuts}
    return out


def add_param_flags(parser) -> None:
    g = parser.add_argument_group("model parameters (shortcuts for --param NAME=VALUE; see docs/models.md)")
    for name, kind in PARAM_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        if kind is bool:
            g.add_argument(flag, dest=name, action="store_true", default=None)
        else:
            g.add_argument(flag, dest=name, type=_parser_type(kind, flag), default=None)


def backtest_config(args) -> BacktestConfig:
    kw = {}
    for f in fields(BacktestConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            kw[f.name] = v
    return BacktestConfig(**kw).validate()
