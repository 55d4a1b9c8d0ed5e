"""A backtest from settings to summary: load (or generate) the stream, warm the kernels up,
replay it through the dataflow, compare with popularity, write the report.

The command line parses and prints; this module does the work::

    from recsys_stream.backtest import run
    result = run(load_config(command="backtest", flags={"model": "mf"}), BacktestConfig(data="u.data"))
    result.summary["rmse"]

The dataflow itself is ``flows.backtest`` (found through ``plugins``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, replace

import numpy as np

from . import plugins
from .config import BACKTEST, BacktestConfig, RunConfig
from .configload import load_config
from .events import RATING, EventBatch
from .features import FeatureStore
from .generate import GeneratorSettings, generate
from .io.readers import DeadLetter, ReaderError, read_events, write_dead_letters
from .io.side import read_item_features, read_user_features
from .models import MODELS, ModelDivergedError
from .report import curves_window, write_report
from .settings import BacktestSettings, FlowSettings, shard_settings
from .shard import Shard


class BacktestError(ValueError):
    """The data cannot be used (a file that cannot be read, no valid events)."""


@dataclass
class Loaded:
    events: EventBatch
    errors: list[DeadLetter]
    format: str
    name: str
    features: FeatureStore | None
    load_s: float


@dataclass
class BacktestResult:
    summary: dict
    run: object  # flows.backtest.BacktestRun
    loaded: Loaded
    latest: dict = field(default_factory=dict)  # user -> latest list record (users watched with ``show``)


def _log(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def load(cfg: RunConfig, b: BacktestConfig, any_model: bool = False) -> Loaded:
    """The events (read from ``b.data`` or generated), side features and dead letters.
    ``any_model``: ratings are not checked against the model's range (``compare`` parses
    once for several models; see ``restrict``)."""
    t0 = time.perf_counter()
    errors: list[DeadLetter] = []
    if b.data:
        _log(f"loading {b.data} ...", b.quiet)
        try:
            value_range = None if any_model else MODELS[cfg.model](cfg.model_params()).value_range()
            res = read_events(b.data, fmt=b.format or None, columns=b.columns or None, delimiter=b.delimiter,
                              default_type=b.event_type, sort=not b.no_sort, value_range=value_range)
        except (ReaderError, OSError) as exc:
            raise BacktestError(str(exc)) from None
        events, errors, fmt, name = res.events, res.errors, res.format, b.data
    else:
        gs = GeneratorSettings(events=cfg.gen_events, users=cfg.gen_users, items=cfg.gen_items, seed=cfg.seed,
                               shape=cfg.gen_shape, groups=cfg.gen_groups, zipf=cfg.gen_zipf)
        _log(f"generating {gs.events:,} events ({gs.users:,} users, {gs.items:,} items, seed {gs.seed}) ...", b.quiet)
        shape = "" if gs.shape == "groups" else f",shape={gs.shape},items={gs.items}"
        events, fmt, name = generate(gs), "generated", f"generated(events={gs.events},seed={gs.seed}{shape})"
    features = None
    if b.user_features or b.item_features:
        features = FeatureStore()
        try:
            if b.user_features:
                n = read_user_features(b.user_features, features, errors)
                _log(f"user features: {n:,} users from {b.user_features}", b.quiet)
            if b.item_features:
                n = read_item_features(b.item_features, features, errors)
                _log(f"item features: {n:,} items from {b.item_features}", b.quiet)
        except (ReaderError, OSError) as exc:
            raise BacktestError(str(exc)) from None
    return Loaded(events, errors, fmt, name, features, time.perf_counter() - t0)


def dead_letter_path(b: BacktestConfig) -> str:
    if b.out:
        return os.path.join(b.out, "dead-letter.jsonl")
    return (b.data.rstrip("/") if b.data else "generated") + ".dead-letter.jsonl"


def warm_up(shard, features) -> None:
    """Compile (or load from the cache) the model's kernels outside the timed replay."""
    b = EventBatch.from_columns(["w0", "w1", "w0"], ["a", "b", "b"], [0.0, 1.0, 2.0], [0, 2, 0], [4.0, 1.0, 2.0],
                                [0, 1, 2], [-1, -1, -1], [0, 1, 2])
    sh = Shard(0, replace(shard, lists="all"), features)
    try:
        sh.process(b)
    except ModelDivergedError:
        return  # compiled; the replay raises it again, naming an event of the data
    sh.recommend("w0")


def _replay(run_backtest, *args, **kw):
    """``run_backtest``, with a model's divergence raised as itself (Bytewax wraps an
    exception of a worker in its own)."""
    try:
        return run_backtest(*args, **kw)
    except Exception as exc:
        cause = exc
        while cause.__cause__ is not None and not isinstance(cause, ModelDivergedError):
            cause = cause.__cause__
        if isinstance(cause, ModelDivergedError):
            raise cause from None
        raise


def restrict(loaded: Loaded, cfg: RunConfig) -> tuple[Loaded, int]:
    """``loaded`` (read with ``any_model``) as ``load`` would have read it for ``cfg``'s
    model: the ratings outside the model's range left out (returns how many); the events
    renumbered as the reader numbers them."""
    value_range = MODELS[cfg.model](cfg.model_params()).value_range()
    ev = loaded.events
    if value_range is None or loaded.format == "generated":  # generated ratings are not checked
        return loaded, 0
    lo, hi = value_range
    out = (ev.etype == RATING) & ~((ev.value >= lo) & (ev.value <= hi))
    n_out = int(out.sum())
    if not n_out:
        return loaded, 0
    kept = ev.take(np.flatnonzero(~out))
    kept.seq = np.arange(len(kept), dtype=np.int64)
    return replace(loaded, events=kept), n_out


def write_dead_letter_file(loaded: Loaded, b: BacktestConfig) -> str | None:
    """The malformed lines to the dead-letter file (see ``dead_letter_path``); its path, or
    None when there are none."""
    if not loaded.errors:
        return None
    if b.out:
        os.makedirs(b.out, exist_ok=True)
    dead_letter = dead_letter_path(b)
    try:
        write_dead_letters(dead_letter, loaded.errors)
    except OSError as exc:
        raise BacktestError(f"cannot write the dead letter {dead_letter}: {exc.strerror}") from None
    first = loaded.errors[0]
    _log(f"{len(loaded.errors):,} malformed line(s) written to {dead_letter} (first: line {first.line}: "
         f"{first.reason})", b.quiet)
    return dead_letter


def run(cfg: RunConfig, b: BacktestConfig, started: float | None = None) -> BacktestResult:
    """The whole backtest (see the module docstring); ``started`` is when the process
    started, for ``startup_s``."""
    started = time.perf_counter() if started is None else started
    loaded = load(cfg, b)
    dead_letter = write_dead_letter_file(loaded, b)
    summary, res, latest = evaluate(cfg, b, loaded, dead_letter, started + loaded.load_s)
    baseline = summary.get("baseline_pop")
    if b.out:
        window = b.window_events or curves_window(res.acc.events)
        summary["seconds"] = round(time.perf_counter() - started, 4)
        paths = write_report(b.out, summary, res.acc.curves(window), window, {"pop": baseline} if baseline else None)
        _log(f"wrote {paths['metrics']}, {paths['curves']}, {paths['report']}", b.quiet)
    summary["seconds"] = round(time.perf_counter() - started, 4)
    return BacktestResult(summary, res, loaded, latest)


def evaluate(cfg: RunConfig, b: BacktestConfig, loaded: Loaded, dead_letter: str | None, startup_origin: float,
             invalid: int = 0) -> tuple[dict, object, dict]:
    """Replay ``loaded`` through the dataflow with ``cfg``'s model: (summary, the
    ``flows.backtest`` run, the watched users' latest lists). ``startup_s`` counts from
    ``startup_origin`` to the end of the warm-up; ``invalid``: events left out beside
    ``loaded.errors`` (``restrict``)."""
    log = loaded.events
    if len(log) == 0:
        raise BacktestError(f"{loaded.name}: no valid events")
    _log(f"{len(log):,} events ready ({loaded.format}) in {loaded.load_s:.2f} s", b.quiet)
    watch = frozenset()
    if b.show:
        users, counts = np.unique(log.user, return_counts=True)
        watch = frozenset(users[np.argsort(-counts, kind="stable")[: b.show]])
    shard = shard_settings(cfg, evaluate=True, lists="last" if b.lists else "none", watch=watch)
    n_shards = cfg.shards or cfg.workers
    settings = BacktestSettings(flow=FlowSettings(shard=shard, n_shards=n_shards, n_buckets=cfg.item_buckets,
                                                  workers=cfg.workers), workers=cfg.workers,
                                batch_size=cfg.source_batch(), passes=b.passes, progress=not b.quiet)
    warm_up(shard, loaded.features)
    startup_s = time.perf_counter() - startup_origin
    _log(f"replaying through the dataflow: model {cfg.model}, {cfg.workers} worker(s), {n_shards} shard(s), "
         f"batches of {cfg.source_batch():,}", b.quiet)
    run_backtest = plugins.flow("backtest")
    res = _replay(run_backtest, log, settings, features=loaded.features, lists_path=b.lists or None,
                  keep_lists=bool(watch))
    metrics = res.acc.finish()
    flow_s = res.flow_seconds
    summary = {
        "data": loaded.name, "format": loaded.format, "model": cfg.model, "k": cfg.k, "seed": cfg.seed,
        "workers": cfg.workers, "shards": n_shards, "passes": b.passes, "params": shard.params.as_dict(),
        "events": res.acc.events, "invalid": len(loaded.errors) + invalid, **metrics,
        "load_s": round(loaded.load_s, 4), "startup_s": round(startup_s, 4), "flow_s": round(flow_s, 4),
        "events_per_s": round(res.acc.events / flow_s, 1) if flow_s > 0 else None, "dead_letter": dead_letter,
    }
    if b.lists:
        summary["lists"] = b.lists
        summary["lists_emitted"] = res.acc.lists
    baseline = None
    if not b.data and cfg.model != "pop" and not b.no_baseline:
        _log("baseline: the same stream with model pop ...", b.quiet)
        pop_cfg = replace(cfg, model="pop", params={})
        pop_settings = BacktestSettings(flow=FlowSettings(shard=shard_settings(pop_cfg, evaluate=True),
                                                          n_shards=n_shards, n_buckets=cfg.item_buckets,
                                                          workers=cfg.workers),
                                        workers=cfg.workers, batch_size=cfg.source_batch(), progress=False)
        pop_run = run_backtest(log, pop_settings)
        baseline = {key: v for key, v in pop_run.acc.finish().items() if "@" in key}
        summary["baseline_pop"] = baseline
    latest = {}
    if watch and res.lists is not None:
        latest = {u: res.lists.latest[u] for u in watch if u in res.lists.latest}
    return summary, res, latest


def backtest(data: str = "", **settings) -> BacktestResult:
    """A backtest from keyword settings, for notebooks and tests: ``backtest("u.data",
    model="mf", params={"dim": 8}, quiet=True)``; without ``data``, on a generated stream:

    >>> r = backtest(model="mf", params={"dim": 8}, gen_events=2000, gen_users=100, gen_items=50, quiet=True,
    ...              no_baseline=True, show=0)
    >>> r.summary["events"], r.summary["params"]["dim"], 0.5 < r.summary["rmse"] < 1.5
    (2000, 8, True)
    """
    bt_names = set(BacktestConfig.__dataclass_fields__)
    b = BacktestConfig(data=data, **{k: v for k, v in settings.items() if k in bt_names}).validate()
    cfg = load_config(None, env={}, flags={k: v for k, v in settings.items() if k not in bt_names},
                      command=BACKTEST)
    return run(cfg, b)
