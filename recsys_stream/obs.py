"""Observability: Prometheus metrics of a worker process and structured logs.

``Metrics`` wraps prometheus-client collectors (a no-op ``NullMetrics`` stands in when
no endpoint is wanted, so the hot path never checks). One endpoint per process
(``serve``); every worker thread of the process reports into the same collectors.

With ``--log-format json`` everything that reaches stderr is one JSON object per line:
our logs (``JsonFormatter``), librdkafka's (through Python logging, see ``io.kafka``),
uncaught exceptions (``sys.excepthook``/``threading.excepthook`` log them, traceback in
``exc``), and whatever native code writes to file descriptor 2 itself (a Rust panic in
Bytewax, a warning of a library): ``json_stderr`` puts a small relay process behind fd 2
that passes JSON lines through and wraps any other text (consecutive lines as one
object, ``logger`` "stderr"). The relay outlives a crash of the worker: it drains the
pipe until the last writer is gone.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time

UPDATE_BUCKETS = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
LATENCY_BUCKETS = (5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class MetricsPortError(OSError):
    """The metrics endpoint cannot listen on its port (in use, or not allowed)."""


class NullMetrics:
    """The process's accounting of every message read, without an endpoint.

    Every message the input hands the flow ends in exactly one of: applied (learned),
    duplicate (its event id was seen within the window), replayed (applied before a
    restore, skipped), filtered (its user is not admitted yet), invalid (dead letter), so
    ``consumed == applied + duplicate + replayed + filtered + invalid`` (``accounting``).
    """

    COUNTS = ("consumed", "applied", "duplicate", "replayed", "filtered", "invalid", "catalog_consumed",
              "catalog_invalid")

    def __init__(self):
        self._lock = threading.Lock()
        self.counts = dict.fromkeys(self.COUNTS, 0)

    def _add(self, name: str, n: int) -> None:
        if n:
            with self._lock:
                self.counts[name] += n

    def accounting(self) -> dict:
        with self._lock:
            return dict(self.counts)

    def consumed(self, n: int) -> None:
        self._add("consumed", n)

    def replayed(self, n: int) -> None:
        self._add("replayed", n)

    def filtered(self, n: int) -> None:
        self._add("filtered", n)

    def events_in(self, n: int) -> None:
        self._add("applied", n)

    def invalid(self, n: int) -> None:
        self._add("invalid", n)

    def catalog(self, consumed: int, invalid: int) -> None:
        self._add("catalog_consumed", consumed)
        self._add("catalog_invalid", invalid)

    def duplicates(self, n: int) -> None:
        self._add("duplicate", n)

    def lists_out(self, n: int) -> None:
        pass

    def update_seconds(self, seconds: float, events: int) -> None:
        pass

    def emit_latency(self, seconds: float) -> None:
        pass

    def staleness(self, ages) -> None:
        """Seconds from another worker's or process's write of item rows to their arrival
        in this worker's replica."""

    def lag(self, topic: str, partition: int, messages: int) -> None:
        pass


class Metrics(NullMetrics):
    """The collectors (names prefixed ``recsys_``), in their own registry."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        super().__init__()
        self.registry = CollectorRegistry()
        r = self.registry
        self._events = Counter("recsys_events_in", "Valid events that entered the model step", registry=r)
        self._invalid = Counter("recsys_events_invalid", "Messages sent to the dead letter", registry=r)
        self._dups = Counter("recsys_events_duplicate", "Events dropped as duplicates (same id)", registry=r)
        self._lists = Counter("recsys_lists_out", "Recommendation lists produced", registry=r)
        self._update = Histogram("recsys_update_seconds", "Model update time per batch (kernel)",
                                 buckets=UPDATE_BUCKETS, registry=r)
        self._update_ev = Histogram("recsys_update_seconds_per_event", "Model update time per event",
                                    buckets=UPDATE_BUCKETS, registry=r)
        self._latency = Histogram("recsys_event_to_emit_seconds",
                                  "From the event entering the flow to its list being produced",
                                  buckets=LATENCY_BUCKETS, registry=r)
        self._stale = Histogram("recsys_item_staleness_seconds",
                                "From an item update's write by one worker to its arrival in another's replica",
                                buckets=LATENCY_BUCKETS, registry=r)
        self._lag = Gauge("recsys_source_lag_messages", "High watermark minus the source position",
                          ["topic", "partition"], registry=r)

    def events_in(self, n):
        super().events_in(n)
        self._events.inc(n)

    def invalid(self, n):
        super().invalid(n)
        self._invalid.inc(n)

    def duplicates(self, n):
        super().duplicates(n)
        self._dups.inc(n)

    def lists_out(self, n):
        self._lists.inc(n)

    def update_seconds(self, seconds, events):
        self._update.observe(seconds)
        if events:
            self._update_ev.observe(seconds / events)

    def emit_latency(self, seconds):
        self._latency.observe(seconds)

    def staleness(self, ages):
        for a in ages:
            self._stale.observe(float(a))

    def lag(self, topic, partition, messages):
        self._lag.labels(topic, str(partition)).set(messages)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        from prometheus_client import start_http_server

        try:
            start_http_server(port, addr=addr, registry=self.registry)
        except (OSError, OverflowError) as exc:
            why = getattr(exc, "strerror", None) or str(exc)
            raise MetricsPortError(f"--metrics-port: cannot serve metrics on port {port}: {why}") from None


class JsonFormatter(logging.Formatter):
    """One JSON object per log line: ts, level, logger, msg and any ``extra`` fields."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        obj = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._skip:
                obj[key] = value
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        return json.dumps(obj, default=str)


_JSON = {"on": False}


def json_mode() -> bool:
    """Whether ``setup_logging("json")`` is in force (errors are then JSON objects too)."""
    return _JSON["on"]


def setup_logging(fmt: str = "text", level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        json_stderr()
        handler.setFormatter(JsonFormatter())
        _install_excepthooks()
        _JSON["on"] = True
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("recsys_stream")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False
    # librdkafka's lines: warnings and errors (its debug chatter only with its own "debug" setting)
    logging.getLogger("recsys_stream.librdkafka").setLevel(logging.WARNING)
    # other libraries' warnings (py.warnings, numba) through the same handler
    logging.captureWarnings(True)
    pyw = logging.getLogger("py.warnings")
    pyw.handlers[:] = [handler]
    pyw.propagate = False


def log_error_line(msg: str) -> None:
    """A user error's one line: JSON in json mode, plain text otherwise."""
    if json_mode():
        print(json.dumps({"ts": round(time.time(), 3), "level": "error", "logger": "recsys_stream.cli", "msg": msg}),
              file=sys.stderr, flush=True)
    else:
        print(msg, file=sys.stderr, flush=True)


def _install_excepthooks() -> None:
    crash = logging.getLogger("recsys_stream.crash")

    def hook(exc_type, exc, tb):
        if issubclass(exc_type, KeyboardInterrupt):
            return sys.__excepthook__(exc_type, exc, tb)
        crash.critical("uncaught %s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))

    def thread_hook(args):
        if args.exc_type is SystemExit:
            return
        crash.critical("uncaught %s in thread %s: %s", args.exc_type.__name__,
                       getattr(args.thread, "name", "?"), args.exc_value,
                       exc_info=(args.exc_type, args.exc_value, args.exc_traceback))

    sys.excepthook = hook
    threading.excepthook = thread_hook


_RELAY = r"""
import json, os, select, signal, sys, time
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
out = os.fdopen(1, "w", buffering=1, encoding="utf-8", errors="replace")
NL = chr(10)
buf, pending = b"", []

def flush_pending():
    global pending
    if pending:
        text = NL.join(pending)
        lvl = "error" if ("panicked" in text or "Traceback" in text or "error" in text.lower()) else "warning"
        out.write(json.dumps({"ts": round(time.time(), 3), "level": lvl, "logger": "stderr", "msg": text}) + NL)
        pending = []

while True:
    r, _, _ = select.select([0], [], [], 0.2)
    if not r:
        flush_pending()
        continue
    chunk = os.read(0, 65536)
    if not chunk:
        break
    buf += chunk
    *lines, buf = buf.split(NL.encode())
    for raw in lines:
        line = raw.decode("utf-8", "replace").rstrip(chr(13))
        try:
            ok = isinstance(json.loads(line), dict)
        except ValueError:
            ok = False
        if ok:
            flush_pending()
            out.write(line + NL)
        elif line.strip():
            pending.append(line)
if buf.strip():
    pending.append(buf.decode("utf-8", "replace"))
flush_pending()
"""


def json_stderr() -> None:
    """Put the relay (see the module docstring) behind file descriptor 2. Idempotent."""
    if _JSON.get("relay") is not None:
        return
    try:
        sys.stderr.flush()
        r, w = os.pipe()
        orig = os.dup(2)
        proc = subprocess.Popen([sys.executable, "-c", _RELAY], stdin=r, stdout=orig, stderr=orig, close_fds=True,
                                start_new_session=True)
        os.close(r)
        os.close(orig)
        os.dup2(w, 2)
        os.close(w)
    except OSError:
        return  # no relay: our own lines are JSON still
    _JSON["relay"] = proc

