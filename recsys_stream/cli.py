"""The ``recsys-stream`` command.

    recsys-stream run [--config FILE] [--brokers B] [--input-topic T] ...   the live job
    recsys-stream backtest [DATA] [--model M] [--dim K] [--k 10] [--seed S] [--out DIR] ...
    recsys-stream replay DATA --brokers B --topic T [--rate R]               a file into Kafka
    recsys-stream tail --brokers B --topic T                                 print the lists
    recsys-stream generate OUT [--events N] ...

``backtest`` replays a log (or, without DATA, a generated stream) through the dataflow,
shows progress on stderr, and ends with exactly one JSON object on the last line of stdout.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # before the heavy imports: startup_s counts them

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

# Model options that have their own flag (they map to the model's parameter of that name).
PARAM_FLAGS = {
    "dim": int,
    "lr": float,
    "reg": float,
    "negatives": int,
    "window": int,
    "recent": int,
    "like_threshold": float,
    "quantized": bool,
    "adagrad": bool,
}


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .models import MODELS

    g = p.add_argument_group("model")
    g.add_argument("--model", default="itemknn", choices=list(MODELS), help="online model (default: itemknn)")
    g.add_argument("--k", type=int, default=10, help="list length / ranking cut-off (default 10)")
    g.add_argument("--seed", type=int, default=42, help="seed of every random draw (default 42)")
    g.add_argument("--dim", type=int, help="factor dimension (mf, implicit, hybrid)")
    g.add_argument("--lr", type=float, help="learning rate")
    g.add_argument("--reg", type=float, help="L2 regularisation of the factors")
    g.add_argument("--negatives", type=int, help="sampled negatives per event (implicit, hybrid)")
    g.add_argument("--window", type=int, help="item-to-item co-occurrence window (itemknn, hybrid)")
    g.add_argument("--recent", type=int, help="recent items that generate candidates (itemknn, hybrid)")
    g.add_argument("--like-threshold", type=float, help="ftrl: a rating at or above this is a like (default 4)")
    g.add_argument("--quantized", action="store_true", default=None, help="rank on an int8 copy of item factors")
    g.add_argument("--adagrad", action="store_true", default=None, help="mf: row-wise AdaGrad factor steps")
    g.add_argument("--half-life", type=float, default=7.0, metavar="DAYS",
                   help="popularity half-life in event-time days; 'inf' for plain counts (default 7)")
    g.add_argument("--rank", action="store_true", default=None, help="ranking metrics for mf/ftrl too (slower)")
    g.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="any other model parameter (repeatable); see docs/models.md")


def _model_params(args):
    from .models import MODELS

    cls = MODELS[args.model].params_type
    known = cls.__dataclass_fields__
    changes = {}
    for name in PARAM_FLAGS:
        val = getattr(args, name, None)
        if val is None:
            continue
        if name not in known:
            raise CliError(f"--{name.replace('_', '-')} does not apply to model {args.model!r} "
                           f"(its parameters: {', '.join(known)})")
        changes[name] = val
    for item in args.param:
        if "=" not in item:
            raise CliError(f"--param {item!r}: expected KEY=VALUE")
        key, val = item.split("=", 1)
        changes[key.strip().replace("-", "_")] = val.strip()
    try:
        return cls().replace(**changes)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _shard_settings(args, params, **kw):
    from .shard import ShardSettings

    try:
        return ShardSettings(model=args.model, params=params, k=args.k, seed=args.seed,
                             half_life_days=float(args.half_life), rank=args.rank, **kw)
    except (ValueError, TypeError) as exc:
        raise CliError(str(exc)) from None


def _warm_up(shard_settings, features) -> None:
    """Compile (or load from the cache) the model's kernels outside the timed replay."""
    from dataclasses import replace

    from .events import EventBatch
    from .shard import Shard

    b = EventBatch.from_columns(["w0", "w1", "w0"], ["a", "b", "b"], [0.0, 1.0, 2.0], [0, 2, 0], [4.0, 1.0, 2.0],
                                [0, 1, 2], [-1, -1, -1], [0, 1, 2])
    Shard(0, replace(shard_settings, lists="all"), features).process(b)


# -- backtest -----------------------------------------------------------------------


def cmd_backtest(args) -> int:
    import numpy as np

    from flows.backtest import BacktestSettings, run_backtest
    from flows.recsys import FlowSettings

    from .features import FeatureStore
    from .generate import GeneratorSettings, generate
    from .io.readers import ReaderError, read_events, write_dead_letters
    from .io.side import read_item_features, read_user_features
    from .report import curves_window, dumps_line, write_report

    t_load = time.perf_counter()
    errors = []
    if args.data:
        _log(f"loading {args.data} ...")
        try:
            res = read_events(args.data, fmt=args.format, columns=args.columns, delimiter=args.delimiter,
                              default_type=args.event_type, sort=not args.no_sort)
        except (ReaderError, OSError) as exc:
            raise CliError(str(exc)) from None
        log, errors, fmt = res.events, res.errors, res.format
        data_name = args.data
    else:
        gs = GeneratorSettings(events=args.gen_events, users=args.gen_users, items=args.gen_items, seed=args.seed)
        _log(f"generating {gs.events:,} events ({gs.users:,} users, {gs.items:,} items, seed {gs.seed}) ...")
        log, fmt, data_name = generate(gs), "generated", f"generated(events={gs.events},seed={gs.seed})"
    features = None
    if args.user_features or args.item_features:
        features = FeatureStore()
        try:
            if args.user_features:
                n = read_user_features(args.user_features, features, errors)
                _log(f"user features: {n:,} users from {args.user_features}")
            if args.item_features:
                n = read_item_features(args.item_features, features, errors)
                _log(f"item features: {n:,} items from {args.item_features}")
        except (ReaderError, OSError) as exc:
            raise CliError(str(exc)) from None
    load_s = time.perf_counter() - t_load
    dead_letter = None
    if errors:
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            dead_letter = os.path.join(args.out, "dead-letter.jsonl")
        else:
            dead_letter = (args.data.rstrip("/") if args.data else "generated") + ".dead-letter.jsonl"
        write_dead_letters(dead_letter, errors)
        _log(f"{len(errors):,} malformed line(s) written to {dead_letter} (first: line {errors[0].line}: "
             f"{errors[0].reason})")
    if len(log) == 0:
        raise CliError(f"{data_name}: no valid events")
    _log(f"{len(log):,} events ready ({fmt}) in {load_s:.2f} s")

    params = _model_params(args)
    watch = frozenset()
    if args.show:
        # show the lists of the most active users at the end
        users, counts = np.unique(log.user, return_counts=True)
        watch = frozenset(users[np.argsort(-counts, kind="stable")[: args.show]])
    shard = _shard_settings(args, params, lists="last" if args.lists else "none", watch=watch)
    workers = args.workers
    settings = BacktestSettings(flow=FlowSettings(shard=shard, n_shards=args.shards or workers), workers=workers,
                                batch_size=args.batch_size, passes=args.passes, progress=not args.quiet)
    _warm_up(shard, features)
    startup_s = time.perf_counter() - _T0 - load_s
    _log(f"replaying through the dataflow: model {args.model}, {workers} worker(s), "
         f"{settings.flow.n_shards} shard(s), batches of {args.batch_size:,}")
    run = run_backtest(log, settings, features=features, lists_path=args.lists, keep_lists=bool(watch))
    metrics = run.acc.finish()
    flow_s = run.flow_seconds
    summary = {
        "data": data_name,
        "format": fmt,
        "model": args.model,
        "k": args.k,
        "seed": args.seed,
        "workers": workers,
        "shards": settings.flow.n_shards,
        "passes": args.passes,
        "params": params.as_dict(),
        "events": run.acc.events,
        "invalid": len(errors),
        **metrics,
        "load_s": round(load_s, 4),
        "startup_s": round(startup_s, 4),
        "flow_s": round(flow_s, 4),
        "events_per_s": round(run.acc.events / flow_s, 1) if flow_s > 0 else None,
        "dead_letter": dead_letter,
    }
    if args.lists:
        summary["lists"] = args.lists
        summary["lists_emitted"] = run.acc.lists
    baseline = None
    if not args.data and args.model != "pop" and not args.no_baseline:
        _log("baseline: the same stream with model pop ...")
        pop_args = argparse.Namespace(**{**vars(args), "model": "pop"})
        pop_shard = _shard_settings(pop_args, _model_params(argparse.Namespace(model="pop", param=[])))
        pop_run = run_backtest(log, BacktestSettings(flow=FlowSettings(shard=pop_shard, n_shards=settings.flow.n_shards),
                                                     workers=workers, batch_size=args.batch_size, progress=False))
        baseline = {key: v for key, v in pop_run.acc.finish().items() if "@" in key}
        summary["baseline_pop"] = baseline
    if watch and run.lists is not None:
        print(f"Recommendations after the replay ({args.model}, top {args.k}) for the {len(watch)} most active users:")
        for user in sorted(watch, key=lambda u: -int(np.sum(log.user == u))):
            rec = run.lists.latest.get(user)
            if rec:
                print(f"  user {user} (v{rec['version']}): {', '.join(rec['items'])}")
    if baseline:
        hr = f"hr@{args.k}"
        if hr in metrics:
            print(f"HR@{args.k}: {args.model} {metrics[hr]:.4f} vs popularity {baseline[hr]:.4f}")
    if args.out:
        rows = run.acc.curves(args.window_events or curves_window(run.acc.events))
        summary["seconds"] = round(time.perf_counter() - _T0, 4)
        paths = write_report(args.out, summary, rows, args.window_events or curves_window(run.acc.events),
                             {"pop": baseline} if baseline else None)
        _log(f"wrote {paths['metrics']}, {paths['curves']}, {paths['report']}")
    summary["seconds"] = round(time.perf_counter() - _T0, 4)
    print(dumps_line(summary), flush=True)
    return 0


# -- generate -----------------------------------------------------------------------


def cmd_generate(args) -> int:
    from .generate import GeneratorSettings, generate
    from .io.readers import write_events_jsonl

    try:
        gs = GeneratorSettings(events=args.events, users=args.users, items=args.items, groups=args.groups,
                               locality=args.locality, typed=args.typed, seed=args.seed)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    b = generate(gs)
    if args.format == "jsonl":
        write_events_jsonl(args.out, b)
    else:
        with open(args.out, "w") as f:
            for e in range(len(b)):
                f.write(f"{b.user[e]}\t{b.item[e]}\t{int(b.value[e])}\t{int(b.ts[e])}\n")
    _log(f"wrote {len(b):,} events to {args.out}")
    return 0


# -- run ------------------------------------------------------------------------------

RUN_FLAGS = {
    "brokers": str, "input_topic": str, "output_topic": str, "dead_letter_topic": str, "items_topic": str,
    "start": str, "partitions": int, "replication": int, "model": str, "k": int, "seed": int,
    "refresh_interval_s": float, "dedupe_window_s": float, "max_lateness_s": float, "workers": int,
    "process_id": int, "addresses": str, "checkpoint_dir": str, "checkpoint_interval_s": float,
    "recovery_partitions": int, "metrics_port": int, "rate": float, "gen_events": int, "batch_size": int,
    "log_format": str, "half_life_days": float, "checkpoint_map_gb": float, "ttl_s": float, "min_user_events": int,
    "max_rate": float,
}


def _kv_pairs(items: list[str], what: str) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise CliError(f"--{what} {item!r}: expected NAME=VALUE")
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def cmd_run(args) -> int:
    import logging
    import signal
    from datetime import timedelta

    from bytewax.run import cli_main

    from flows.job import build_job, recovery_config

    from .config import ConfigError, load_config
    from .io.control import STOP
    from .io.kafka import KafkaSetupError
    from .obs import Metrics, NullMetrics, setup_logging
    from .storage import CheckpointError

    flags = {name: getattr(args, name) for name in RUN_FLAGS if getattr(args, name, None) is not None}
    if args.evaluate:
        flags["evaluate"] = True
    if args.exit_at_end:
        flags["exit_at_end"] = True
    if args.checkpoint_fallback:
        flags["checkpoint_fallback"] = True
    if args.param:
        flags["params"] = _kv_pairs(args.param, "param")
    if args.kafka:
        flags["kafka"] = _kv_pairs(args.kafka, "kafka")
    try:
        cfg = load_config(args.config, flags=flags)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    setup_logging(cfg.log_format)
    log = logging.getLogger("recsys_stream.run")
    metrics = NullMetrics()
    if cfg.metrics_port:
        metrics = Metrics()
        port = cfg.metrics_port + (cfg.process_id or 0)
        metrics.serve(port)
        log.info("metrics on :%d/metrics", port)
    try:
        job = build_job(cfg, metrics)
    except (KafkaSetupError, CheckpointError, ValueError) as exc:
        raise CliError(str(exc)) from None
    log.info("starting", extra={"config": cfg.describe(), "shards": job.settings.n_shards})

    def stop(signum, _frame):
        # end the input; Bytewax then completes the epoch and exits (see io.control)
        log.info("signal %d: finishing the current batch and stopping", signum)
        STOP.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    addresses = [a for a in cfg.addresses.split(";") if a.strip()] if cfg.addresses else None
    try:
        cli_main(job.flow, workers_per_process=cfg.workers, process_id=cfg.process_id, addresses=addresses,
                 epoch_interval=timedelta(seconds=cfg.checkpoint_interval_s), recovery_config=recovery_config(cfg))
    except Exception as exc:  # a Bytewax error wraps ours: show the cause, not a Rust backtrace
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, (CheckpointError, KafkaSetupError)):
            raise CliError(str(cause)) from None
        raise
    log.info("stopped")
    if job.metrics is not None and job.metrics.acc.events:
        # the embedded job ends with its prequential metrics, one JSON object on the last line
        from .report import dumps_line

        acc, clock = job.metrics.acc, job.metrics.clock
        flow_s = (clock.last_update - clock.first_event) if clock.first_event and clock.last_update else 0.0
        summary = {"model": cfg.model, "k": cfg.k, "events": acc.events, **acc.finish(), "lists": acc.lists,
                   "duplicates": acc.duplicates, "filtered": acc.filtered,
                   "flow_s": round(flow_s, 4), "events_per_s": round(acc.events / flow_s, 1) if flow_s else None,
                   "checkpointing": bool(cfg.checkpoint_dir)}
        print(dumps_line(summary), flush=True)
    return 0


def cmd_replay(args) -> int:
    from .io.kafka import KafkaSetupError, ensure_topics
    from .io.kafka_tools import event_messages, produce_messages
    from .io.readers import ReaderError, read_events, write_dead_letters

    try:
        res = read_events(args.data, fmt=args.format, columns=args.columns, delimiter=args.delimiter,
                          default_type=args.event_type, sort=not args.no_sort)
    except (ReaderError, OSError) as exc:
        raise CliError(str(exc)) from None
    if res.errors:
        dl = args.data.rstrip("/") + ".dead-letter.jsonl"
        write_dead_letters(dl, res.errors)
        _log(f"{len(res.errors):,} malformed line(s) written to {dl}")
    conf = {"bootstrap.servers": args.brokers, **_kv_pairs(args.kafka, "kafka")}
    try:
        if args.partitions:
            ensure_topics(conf, [args.topic], args.partitions, 1)
    except KafkaSetupError as exc:
        raise CliError(str(exc)) from None
    import os

    source = os.path.basename(args.data.rstrip("/"))
    b = res.events
    n = produce_messages(conf, args.topic, event_messages(b, source), len(b), rate=args.rate, progress=_log)
    print(n)
    return 0


def cmd_tail(args) -> int:
    from .io.kafka_tools import tail

    conf = {"bootstrap.servers": args.brokers, **_kv_pairs(args.kafka, "kafka")}
    tail(conf, args.topic, from_beginning=args.from_beginning, max_messages=args.max, timeout_s=args.timeout)
    return 0


def cmd_inspect(args) -> int:
    from .inspect import describe
    from .report import dumps_line
    from .storage import CheckpointError

    try:
        info = describe(args.checkpoint_dir, user=args.user, with_digest=args.digest)
    except CheckpointError as exc:
        raise CliError(str(exc)) from None
    if args.json:
        print(dumps_line(info))
    else:
        print(f"checkpoint {info['checkpoint_dir']}: model {info['model']}, {info['n_shards']} shard(s)")
        for shard, s in info["shards"].items():
            extra = "" if s["committed_generation"] == s["newest_generation"] else \
                f" (newest written: {s['newest_generation']}, not committed by Bytewax)"
            print(f"  shard {shard}: generation {s['committed_generation']}{extra}; "
                  f"{s.get('users', 0):,} users, {s.get('items', 0):,} items")
        if "user" in info:
            u = info["user"]
            print(f"user {u['id']} (shard {u['shard']}, {'known' if u['known'] else 'unknown: popularity'}, "
                  f"version {u['version']})")
            for name, norm in u["norms"].items():
                print(f"  |{name}| = {norm:.6f}")
            print("  list: " + ", ".join(u["list"]))
    if args.digest:
        print(info["digest"])
    return 0


# -- parser -------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from .io.readers import FORMATS

    p = argparse.ArgumentParser(prog="recsys-stream", description="Real-time streaming recommender")
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("backtest", help="prequential replay of a log through the dataflow",
                       description="Replay a log (or a generated stream) through the dataflow: each event is scored "
                                   "with the model as it stands, then learned. Ends with one JSON line on stdout.")
    b.add_argument("data", nargs="?", help="log file or MovieLens folder; omitted: a generated stream")
    b.add_argument("--format", choices=FORMATS, help="input format (default: detected)")
    b.add_argument("--columns", help="csv: FIELD=COLUMN mapping, e.g. user=uid,item=sku,ts=time,value=qty")
    b.add_argument("--delimiter", default=",", help="csv delimiter (default ,)")
    b.add_argument("--event-type", default="rating", help="csv without a type column: the events' type")
    b.add_argument("--no-sort", action="store_true", help="replay in file order instead of event-time order")
    b.add_argument("--user-features", metavar="FILE", help="u.user / users.dat side features")
    b.add_argument("--item-features", metavar="FILE", help="u.item / movies.dat side features")
    _add_model_args(b)
    r = b.add_argument_group("run")
    r.add_argument("--workers", type=int, default=1, help="Bytewax worker threads (default 1)")
    r.add_argument("--shards", type=int, help="user key groups (default: workers)")
    r.add_argument("--batch-size", type=int, default=4096, help="events per source batch (default 4096)")
    r.add_argument("--passes", type=int, default=1, help="replay the log this many times (speed runs)")
    r.add_argument("--out", metavar="DIR", help="write metrics.json, curves.csv, plots and report.html here")
    r.add_argument("--window-events", type=int, help="events per window of the curves (default: ~50 windows)")
    r.add_argument("--lists", metavar="FILE", help="write every refreshed list (last event per user per batch)")
    r.add_argument("--show", type=int, default=3, help="print the final lists of the N most active users (default 3)")
    r.add_argument("--quiet", action="store_true", help="no progress on stderr")
    r.add_argument("--no-baseline", action="store_true", help="generated data: skip the popularity comparison")
    g = b.add_argument_group("generated stream (without DATA)")
    g.add_argument("--gen-events", type=int, default=200_000)
    g.add_argument("--gen-users", type=int, default=5_000)
    g.add_argument("--gen-items", type=int, default=2_000)
    b.set_defaults(func=cmd_backtest)

    run = sub.add_parser("run", help="the live job: Kafka in, lists out (without --brokers: a generated stream)",
                         description="Consume interaction events from Kafka, update the model per event and "
                                     "produce refreshed top-k lists. Without --brokers: a generated stream, lists "
                                     "on stdout. Settings: flags > RECSYS_* environment > --config TOML.")
    run.add_argument("--config", metavar="FILE", help="TOML settings ([job], [model.params], [kafka])")
    run.add_argument("--brokers", help="bootstrap servers; omitted: the embedded generated stream")
    run.add_argument("--input-topic", dest="input_topic")
    run.add_argument("--output-topic", dest="output_topic")
    run.add_argument("--dead-letter-topic", dest="dead_letter_topic")
    run.add_argument("--items-topic", dest="items_topic", help="catalog operations {item, op: add|retire}")
    run.add_argument("--start", choices=("earliest", "latest"), help="without a checkpoint (default earliest)")
    run.add_argument("--partitions", type=int, help="of the topics the job creates (default 3)")
    run.add_argument("--replication", type=int)
    run.add_argument("--model", choices=list(__import__("recsys_stream.models", fromlist=["MODELS"]).MODELS))
    run.add_argument("--k", type=int)
    run.add_argument("--seed", type=int)
    run.add_argument("--half-life", dest="half_life_days", type=float, metavar="DAYS")
    run.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="model parameter")
    run.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE", help="librdkafka setting")
    run.add_argument("--refresh-interval", dest="refresh_interval_s", type=float, metavar="S",
                     help="at most one list per user per S seconds, leading and trailing edge (default 1)")
    run.add_argument("--dedupe-window", dest="dedupe_window_s", type=float, metavar="S")
    run.add_argument("--max-lateness", dest="max_lateness_s", type=float, metavar="S")
    run.add_argument("--evaluate", action="store_true", help="also compute prequential metrics online")
    run.add_argument("--workers", type=int, help="Bytewax workers in this process")
    run.add_argument("--process-id", dest="process_id", type=int, help="this process in a Bytewax cluster")
    run.add_argument("--addresses", help="host:port;host:port of every process of the cluster")
    run.add_argument("--checkpoint-dir", dest="checkpoint_dir")
    run.add_argument("--checkpoint-interval", dest="checkpoint_interval_s", type=float, metavar="S")
    run.add_argument("--recovery-partitions", dest="recovery_partitions", type=int,
                     help="Bytewax recovery partitions made at first start: the most workers ever (default 8)")
    run.add_argument("--checkpoint-map-gb", dest="checkpoint_map_gb", type=float)
    run.add_argument("--checkpoint-fallback", action="store_true",
                     help="if the checkpoint named by the last snapshot is unusable, resume from an older intact "
                          "one (the events between are skipped)")
    run.add_argument("--ttl", dest="ttl_s", type=float, metavar="S",
                     help="users idle this long (event time) leave memory, kept in the checkpoint")
    run.add_argument("--min-user-events", dest="min_user_events", type=int, metavar="N",
                     help="frequency filter: a user gets state at their Nth event (default 1)")
    run.add_argument("--metrics-port", dest="metrics_port", type=int, help="Prometheus endpoint port")
    run.add_argument("--batch-size", dest="batch_size", type=int, help="messages per poll")
    run.add_argument("--max-rate", dest="max_rate", type=float, metavar="N",
                     help="throttle the input to N messages/s per partition (backfills)")
    run.add_argument("--rate", type=float, help="embedded stream: events per second (default 200)")
    run.add_argument("--events", dest="gen_events", type=int, help="embedded stream: stop after N events")
    run.add_argument("--exit-at-end", action="store_true", help="stop once the input is drained")
    run.add_argument("--log-format", dest="log_format", choices=("text", "json"))
    run.set_defaults(func=cmd_run)

    rp = sub.add_parser("replay", help="produce a file's events into a Kafka topic, keyed by user")
    rp.add_argument("data")
    rp.add_argument("--brokers", required=True)
    rp.add_argument("--topic", required=True)
    rp.add_argument("--rate", type=float, default=0.0, help="events per second (default: as fast as possible)")
    rp.add_argument("--partitions", type=int, default=0, help="create the topic with N partitions if missing")
    rp.add_argument("--format", choices=FORMATS)
    rp.add_argument("--columns")
    rp.add_argument("--delimiter", default=",")
    rp.add_argument("--event-type", default="rating")
    rp.add_argument("--no-sort", action="store_true")
    rp.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE")
    rp.set_defaults(func=cmd_replay)

    tl = sub.add_parser("tail", help="print recommendation lists as they arrive")
    tl.add_argument("--brokers", required=True)
    tl.add_argument("--topic", default="recommendations")
    tl.add_argument("--from-beginning", action="store_true")
    tl.add_argument("--max", type=int, default=0, help="stop after N lists")
    tl.add_argument("--timeout", type=float, default=0.0, help="stop after S seconds without a list")
    tl.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE")
    tl.set_defaults(func=cmd_tail)

    ins = sub.add_parser("inspect", help="what a checkpoint directory holds; --digest hashes the model state")
    ins.add_argument("checkpoint_dir")
    ins.add_argument("--user", help="show this user's vector norms and current list")
    ins.add_argument("--json", action="store_true", help="one JSON object")
    ins.add_argument("--digest", action="store_true",
                     help="print, as the last line, a stable hash of the model state at the committed generation")
    ins.set_defaults(func=cmd_inspect)

    gen = sub.add_parser("generate", help="write a generated event stream with planted structure")
    gen.add_argument("out", help="output file")
    gen.add_argument("--format", choices=("jsonl", "udata"), default="jsonl")
    gen.add_argument("--events", type=int, default=100_000)
    gen.add_argument("--users", type=int, default=2_000)
    gen.add_argument("--items", type=int, default=1_000)
    gen.add_argument("--groups", type=int, default=20)
    gen.add_argument("--locality", type=float, default=0.5)
    gen.add_argument("--typed", action="store_true", help="views/clicks/carts/purchases instead of ratings")
    gen.add_argument("--seed", type=int, default=7)
    gen.set_defaults(func=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        print(f"recsys-stream: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
