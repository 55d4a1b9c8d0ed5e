"""The ``recsys-stream`` command.

    recsys-stream backtest [DATA] [--model M] [--dim K] [--k 10] [--seed S] [--out DIR] ...
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

    cls = MODELS[args.model][1]
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
