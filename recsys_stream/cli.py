"""The ``recsys-stream`` command: parses, calls the library, prints.

    recsys-stream run [--config FILE] [--brokers B] [--input-topic T] ...   the live job
    recsys-stream backtest [DATA] [--model M] [--dim K] [--k 10] [--seed S] [--out DIR] ...
    recsys-stream compare [DATA] --models itemknn,hybrid,pop [backtest options]  models side by side
    recsys-stream replay DATA --brokers B --topic T [--rate R]               a file into Kafka
    recsys-stream tail --brokers B --topic T                                 print the lists
    recsys-stream lists --brokers B --topic T --user U [--user U2] [--json]  users' latest lists
    recsys-stream inspect DIR [--user U] [--item I] [--counts] [--json] [--digest]  a checkpoint
    recsys-stream generate OUT [--events N] ...

``run`` and ``backtest`` take the same settings (``config``: flags > RECSYS_* environment >
``--config`` TOML > defaults). A user's mistake ends with exit status 2 and one line on
stderr naming the flag, file or topic; an internal error shows its traceback.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # before the heavy imports: startup_s counts them

import argparse  # noqa: E402
import sys  # noqa: E402


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _config(args, command: str):
    from .config import ConfigError
    from .configload import flags_of, load_config

    try:
        return load_config(getattr(args, "config", None), flags=flags_of(args, command=command), command=command)
    except ConfigError as exc:
        raise CliError(str(exc)) from None


# -- backtest -----------------------------------------------------------------------


def cmd_backtest(args) -> int:
    from .backtest import BacktestError, run
    from .config import BACKTEST, ConfigError
    from .configload import backtest_config
    from .models import ModelDivergedError
    from .report import dumps_line

    cfg = _config(args, BACKTEST)
    try:
        b = backtest_config(args)
    except ConfigError as exc:
        raise CliError(str(exc)) from None
    try:
        res = run(cfg, b, started=_T0)
    except (BacktestError, ModelDivergedError) as exc:
        raise CliError(str(exc)) from None
    summary = res.summary
    if res.latest:
        counts = {u: int((res.loaded.events.user == u).sum()) for u in res.latest}
        print(f"Recommendations after the replay ({cfg.model}, top {cfg.k}) for the {len(res.latest)} most active "
              "users:")
        for user in sorted(res.latest, key=lambda u: -counts[u]):
            rec = res.latest[user]
            print(f"  user {user} (v{rec['version']}): {', '.join(rec['items'])}")
    baseline = summary.get("baseline_pop")
    hr = f"hr@{cfg.k}"
    if baseline and hr in summary:
        print(f"HR@{cfg.k}: {cfg.model} {summary[hr]:.4f} vs popularity {baseline[hr]:.4f}")
    print(dumps_line(summary), flush=True)
    return 0


# -- compare ------------------------------------------------------------------------


def cmd_compare(args) -> int:
    from .backtest import BacktestError
    from .compare import model_configs, parse_models, run_compare, with_peers
    from .config import BACKTEST, ConfigError
    from .configload import backtest_config, flags_of
    from .models import ModelDivergedError
    from .report import dumps_line

    try:
        models = with_peers(parse_models(args.models)) if args.peers else parse_models(args.models)
        flags = flags_of(args, command=BACKTEST)
        if "model" in flags:
            raise ConfigError("--model: compare takes --models M1,M2,...")
        cfgs = model_configs(models, getattr(args, "config", None), flags)
        b = backtest_config(args)
    except ConfigError as exc:
        raise CliError(str(exc)) from None

    def one(model, summary):
        print(dumps_line(summary), flush=True)

    try:
        res = run_compare(cfgs, b, started=_T0, on_summary=one, peers=args.peers)
    except (BacktestError, ModelDivergedError) as exc:
        raise CliError(str(exc)) from None
    print(dumps_line(res.summaries), flush=True)
    return 0


# -- generate -----------------------------------------------------------------------


def cmd_generate(args) -> int:
    from .generate import GeneratorSettings, generate
    from .io.readers import write_events_jsonl

    try:
        gs = GeneratorSettings(events=args.events, users=args.users, items=args.items, groups=args.groups,
                               locality=args.locality, typed=args.typed, seed=args.seed, shape=args.shape,
                               zipf=args.zipf)
    except ValueError as exc:
        raise CliError(str(exc)) from None
    b = generate(gs)
    try:
        if args.format == "jsonl":
            write_events_jsonl(args.out, b)
        else:
            with open(args.out, "w") as f:
                for e in range(len(b)):
                    f.write(f"{b.user[e]}\t{b.item[e]}\t{int(b.value[e])}\t{int(b.ts[e])}\n")
    except OSError as exc:
        raise CliError(f"{args.out}: cannot write: {exc.strerror}") from None
    _log(f"wrote {len(b):,} events to {args.out}")
    return 0


# -- run ------------------------------------------------------------------------------


def cmd_run(args) -> int:
    import logging
    import os
    import signal
    from datetime import timedelta

    from bytewax.run import cli_main

    from . import plugins
    from .config import RUN
    from .io.control import STOP
    from .io.kafka import KafkaSetupError
    from .obs import Metrics, MetricsPortError, NullMetrics, setup_logging
    from .report import dumps_line
    from .storage import CheckpointError

    if getattr(args, "log_format", None) == "json" or (args.log_format is None and
                                                       os.environ.get("RECSYS_LOG_FORMAT") == "json"):
        setup_logging("json")  # before anything can fail: a configuration error is a JSON line too
    cfg = _config(args, RUN)
    setup_logging(cfg.log_format)
    log = logging.getLogger("recsys_stream.run")
    metrics = NullMetrics()
    if cfg.metrics_port:
        metrics = Metrics()
        port = cfg.metrics_port + (cfg.process_id or 0)
        try:
            metrics.serve(port)
        except MetricsPortError as exc:
            raise CliError(str(exc)) from None
        log.info("metrics on :%d/metrics", port)
    build_job, recovery_config = plugins.flow("job"), plugins.flow("recovery")
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
    try:
        cli_main(job.flow, workers_per_process=cfg.workers, process_id=cfg.process_id,
                 addresses=cfg.address_list() or None, epoch_interval=timedelta(seconds=cfg.checkpoint_interval_s),
                 recovery_config=recovery_config(cfg))
    except Exception as exc:  # a Bytewax error wraps ours: show the cause, not a Rust backtrace
        cause = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, (CheckpointError, KafkaSetupError)):
            raise CliError(str(cause)) from None
        raise
    finally:
        job.close()
    counts = metrics.accounting()
    log.info("stopped; messages consumed %d = applied %d + duplicate %d + replayed %d + filtered %d + invalid %d",
             counts["consumed"], counts["applied"], counts["duplicate"], counts["replayed"], counts["filtered"],
             counts["invalid"], extra={"accounting": counts})
    if job.metrics is not None and job.metrics.acc.events:
        # the embedded job ends with its prequential metrics, one JSON object on the last line
        acc, clock = job.metrics.acc, job.metrics.clock
        flow_s = (clock.last_update - clock.first_event) if clock.first_event and clock.last_update else 0.0
        summary = {"model": cfg.model, "k": cfg.k, "events": acc.events, **acc.finish(), "lists": acc.lists,
                   "duplicates": acc.duplicates, "filtered": acc.filtered, "accounting": counts,
                   "flow_s": round(flow_s, 4), "events_per_s": round(acc.events / flow_s, 1) if flow_s else None,
                   "checkpointing": bool(cfg.checkpoint_dir)}
        print(dumps_line(summary), flush=True)
    return 0


# -- Kafka tools ----------------------------------------------------------------------


def _kafka_conf(args) -> dict:
    from .config import ConfigError
    from .configload import kv_pairs

    try:
        return {"bootstrap.servers": args.brokers, **kv_pairs(args.kafka, "--kafka")}
    except ConfigError as exc:
        raise CliError(str(exc)) from None


def cmd_replay(args) -> int:
    import os

    from .io.kafka import KafkaSetupError, ensure_topics, topic_partitions
    from .io.kafka_tools import event_messages, produce_messages
    from .io.readers import ReaderError, read_events, write_dead_letters

    if not (args.rate >= 0 and args.rate != float("inf")):
        raise CliError(f"--rate: must be a finite number >= 0, got {args.rate}")
    if args.partitions < 0:
        raise CliError(f"--partitions: must be >= 0 (0: the topic must exist), got {args.partitions}")
    conf = _kafka_conf(args)
    try:  # the topic first: a mistake there is found before the file is read
        if args.partitions:
            ensure_topics(conf, [args.topic], args.partitions, 1)
        else:
            topic_partitions(conf, args.topic, missing="pass --partitions N to create it, or check --topic")
    except KafkaSetupError as exc:
        raise CliError(str(exc)) from None
    try:
        res = read_events(args.data, fmt=args.format, columns=args.columns, delimiter=args.delimiter,
                          default_type=args.event_type, sort=not args.no_sort)
    except (ReaderError, OSError) as exc:
        raise CliError(str(exc)) from None
    if res.errors:
        dl = args.data.rstrip("/") + ".dead-letter.jsonl"
        try:
            write_dead_letters(dl, res.errors)
        except OSError as exc:
            raise CliError(f"cannot write the dead letter {dl}: {exc.strerror}") from None
        _log(f"{len(res.errors):,} malformed line(s) written to {dl}")
    try:
        b = res.events
        n = produce_messages(conf, args.topic, event_messages(b, os.path.basename(args.data.rstrip("/"))), len(b),
                             rate=args.rate, progress=_log)
    except KafkaSetupError as exc:
        raise CliError(str(exc)) from None
    print(n)
    return 0


def cmd_tail(args) -> int:
    from .io.kafka import KafkaSetupError
    from .io.kafka_tools import tail

    if args.max < 0:
        raise CliError(f"--max: must be >= 0 (0: no limit), got {args.max}")
    if not args.timeout >= 0:
        raise CliError(f"--timeout: must be >= 0 (0: wait for ever), got {args.timeout}")
    try:
        tail(_kafka_conf(args), args.topic, from_beginning=args.from_beginning, max_messages=args.max,
             timeout_s=args.timeout)
    except KafkaSetupError as exc:
        raise CliError(str(exc)) from None
    return 0


def cmd_lists(args) -> int:
    from .io.kafka import KafkaSetupError
    from .io.lookup import latest_lists
    from .report import dumps_line

    if not args.timeout > 0:
        raise CliError(f"--timeout: must be > 0, got {args.timeout}")
    users = list(dict.fromkeys(args.user))
    try:
        found = latest_lists(_kafka_conf(args), args.topic, users, timeout=args.timeout)
    except KafkaSetupError as exc:
        raise CliError(str(exc)) from None
    missing = [u for u in users if u not in found]
    if missing:
        raise CliError(f"no list on topic {args.topic!r} for user(s) {', '.join(repr(u) for u in missing)}: unknown "
                       "to the job (no event yet), or the wrong --topic")
    for u in users:
        p, offset, rec, version = found[u]
        if args.json:
            print(dumps_line(rec))
            continue
        items = rec.get("items") or []
        scores = rec.get("scores") or [None] * len(items)
        shown = ", ".join(f"{i} ({s:.4g})" if isinstance(s, (int, float)) else str(i) for i, s in zip(items, scores))
        print(f"user {u} (version {version}, model {rec.get('model')}, partition {p} offset {offset}): "
              f"{shown or '(empty list)'}")
    return 0


# -- inspect --------------------------------------------------------------------------


def cmd_inspect(args) -> int:
    from .inspect import describe
    from .report import dumps_line
    from .storage import CheckpointError

    try:
        info = describe(args.checkpoint_dir, user=args.user, with_digest=args.digest, item=args.item,
                        counts=args.counts)
    except CheckpointError as exc:
        raise CliError(str(exc)) from None
    except OSError as exc:
        raise CliError(f"{args.checkpoint_dir}: cannot read the checkpoint ({exc.strerror or exc})") from None
    if args.counts:
        print(dumps_line(info["counts"]))
    elif args.json:
        print(dumps_line(info))
    else:
        print(f"checkpoint {info['checkpoint_dir']}: model {info['model']}, {info['n_shards']} shard(s), "
              f"{info['n_buckets']} item bucket(s)")
        for shard, s in info["shards"].items():
            extra = "" if s["committed_generation"] == s["newest_generation"] else \
                f" (newest written: {s['newest_generation']}, not committed by Bytewax)"
            print(f"  shard {shard}: generation {s['committed_generation']}{extra}; {s.get('users', 0):,} users")
        for b, s in info["buckets"].items():
            extra = "" if s["committed_generation"] == s["newest_generation"] else \
                f" (newest written: {s['newest_generation']}, not committed by Bytewax)"
            print(f"  item bucket {b}: generation {s['committed_generation']}{extra}; {s.get('items', 0):,} items")
        if "item" in info:
            it = info["item"]
            if not it["known"]:
                print(f"item {it['id']} (bucket {it['bucket']}): unknown")
            else:
                print(f"item {it['id']} (bucket {it['bucket']}): {it['events']:,} events, "
                      f"{'active' if it['active'] else 'retired'}, log popularity {it['log_popularity']:.4f}")
                for name, norm in it["norms"].items():
                    print(f"  |{name}| = {norm:.6f}")
                for key, nb in it.items():
                    if key.startswith("neighbors."):
                        print(f"  {key}: " + ", ".join(f"{j} ({c:g})" for j, c in nb[:10]))
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


class _Parser(argparse.ArgumentParser):
    """Usage errors: one line, exit status 2 (argparse's own status), no usage dump."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from .config import BACKTEST, RUN, BacktestConfig, RunConfig
    from .configload import add_flags, add_param_flags
    from .io.readers import FORMATS

    p = _Parser(prog="recsys-stream", description="Real-time streaming recommender")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    b = sub.add_parser("backtest", help="prequential replay of a log through the dataflow",
                       description="Replay a log (or a generated stream) through the dataflow: each event is scored "
                                   "with the model as it stands, then learned. Ends with one JSON line on stdout.")
    b.add_argument("data", nargs="?", default=None, help="log file or MovieLens folder; omitted: a generated stream")
    b.add_argument("--config", metavar="FILE", help="TOML settings ([job], [model.params])")
    add_flags(b, BacktestConfig, BACKTEST)
    add_flags(b, RunConfig, BACKTEST)
    add_param_flags(b)
    b.set_defaults(func=cmd_backtest)

    cp = sub.add_parser("compare", help="several models replayed on one stream, side by side",
                        description="Replay one stream (read once) through the backtest dataflow with each model of "
                                    "--models: one JSON summary per model, then one object keyed by model; --out "
                                    "DIR: report.html with the models' curves overlaid.")
    cp.add_argument("data", nargs="?", default=None, help="log file or MovieLens folder; omitted: a generated stream")
    cp.add_argument("--models", required=True, metavar="M1,M2,...", help="the models to compare (comma-separated)")
    cp.add_argument("--peers", action="store_true", help="River's BiasedMF and FTRL on the same stream too, and "
                    "popularity (needs the peers extra: River)")
    cp.add_argument("--config", metavar="FILE", help="TOML settings ([job], [model.params])")
    add_flags(cp, BacktestConfig, BACKTEST)
    add_flags(cp, RunConfig, BACKTEST)
    add_param_flags(cp)
    cp.set_defaults(func=cmd_compare)

    run = sub.add_parser("run", help="the live job: Kafka in, lists out (without --brokers: a generated stream)",
                         description="Consume interaction events from Kafka, update the model per event and "
                                     "produce refreshed top-k lists. Without --brokers: a generated stream, lists "
                                     "on stdout. Settings: flags > RECSYS_* environment > --config TOML.")
    run.add_argument("--config", metavar="FILE", help="TOML settings ([job], [model.params], [kafka])")
    add_flags(run, RunConfig, RUN)
    run.add_argument("--no-output-compacted", dest="output_compacted", action="store_false", default=None,
                     help="create the output topic with delete retention instead of compaction")
    add_param_flags(run)
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
    tl.add_argument("--timeout", type=float, default=0.0, help="stop after S seconds without a list (a missing "
                    "topic is an error at once; unreachable brokers after 15 s)")
    tl.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE")
    tl.set_defaults(func=cmd_tail)

    ls = sub.add_parser("lists", help="print users' latest lists from the output topic (a lookup)",
                        description="Read each user's partition (murmur2 of the key, as the job produces) from the "
                                    "beginning to its end offset and print the record of the highest version.")
    ls.add_argument("--brokers", required=True)
    ls.add_argument("--topic", default="recommendations")
    ls.add_argument("--user", action="append", required=True, help="a user id (repeatable)")
    ls.add_argument("--json", action="store_true", help="each list as its JSON record, one per line")
    ls.add_argument("--timeout", type=float, default=15.0, help="seconds to reach the brokers and read a partition")
    ls.add_argument("--kafka", action="append", default=[], metavar="KEY=VALUE")
    ls.set_defaults(func=cmd_lists)

    ins = sub.add_parser("inspect", help="what a checkpoint directory holds; --digest hashes the model state")
    ins.add_argument("checkpoint_dir")
    ins.add_argument("--user", help="show this user's vector norms and current list")
    ins.add_argument("--item", help="show what this item's owner holds (events, popularity, norms, neighbours)")
    ins.add_argument("--counts", action="store_true",
                     help="print one JSON object: every user's and item's event count, as the owners hold them")
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
    gen.add_argument("--shape", choices=("groups", "zipf"), default="groups",  # generate.SHAPES
                     help="zipf: a large catalog (Zipf popularity over all items, --groups taste clusters)")
    gen.add_argument("--zipf", type=float, default=1.1, help="popularity exponent")
    gen.set_defaults(func=cmd_generate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except CliError as exc:
        from .obs import log_error_line

        log_error_line(f"recsys-stream: error: {' '.join(str(exc).splitlines())}")
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
