"""Several models on one stream: ``recsys-stream compare DATA --models itemknn,hybrid,pop``.

The stream is read (or generated) once; each model is then replayed through the same
backtest dataflow as ``backtest`` runs (``backtest.evaluate``), one after the other in this
process, with the same settings, so each model's figures are those of a separate
``backtest --model M`` with the same options (one worker: identical). Ratings outside a
model's range (``mf``) are left out for that model only, as its own backtest's reader
would have (they count in its ``invalid``); the dead-letter file holds the lines no model
can use.

The first model's ``startup_s`` counts the imports and its warm-up, as a backtest's; a
later model's, its own warm-up (compiling its kernels) only.

Model parameters (``--param``, ``--dim`` ...) go to the models that declare them; one that
none of the models declares is an error.

Memory: each model's ``peak_rss_mb`` is the process's peak resident set during its warm-up
and replay (Linux's high-water mark, reset before each model through
``/proc/self/clear_refs``); it includes what the process already held, the parsed stream
first. Where the mark cannot be reset, the figure is the process's peak so far
(``memory`` in the summary says which).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field, fields, replace

from .backtest import BacktestError, Loaded, evaluate, load, restrict, write_dead_letter_file
from .config import BACKTEST, BacktestConfig, ConfigError, RunConfig
from .configload import from_env, from_toml, load_config
from .models import MODELS
from .report import curves_window, write_compare_report

RSS_RESET = "process peak RSS during the model's warm-up and replay (VmHWM, reset before each model)"
RSS_CUMULATIVE = "process peak RSS so far (the high-water mark could not be reset)"


@dataclass
class CompareResult:
    summaries: dict  # model -> summary (as backtest's)
    curves: dict  # model -> curve rows
    loaded: Loaded
    dead_letter: str | None
    report: str | None = None  # report.html with --out
    latest: dict = field(default_factory=dict)  # model -> {user: latest list record} (``--show`` users)


def parse_models(text: str) -> list[str]:
    """``"itemknn, pop"`` -> ``["itemknn", "pop"]`` (each once, in order).

    >>> parse_models("itemknn,pop,itemknn")
    ['itemknn', 'pop']
    >>> parse_models("itemknn,bogus")
    Traceback (most recent call last):
    recsys_stream.config.ConfigError: --models: unknown model 'bogus'; expected some of mf, implicit, itemknn, ftrl, pop, hybrid
    """
    names = [m.strip() for m in (text or "").split(",") if m.strip()]
    if not names:
        raise ConfigError(f"--models: expected a comma-separated list of {', '.join(MODELS)}")
    for m in names:
        if m not in MODELS:
            raise ConfigError(f"--models: unknown model {m!r}; expected some of {', '.join(MODELS)}")
    return list(dict.fromkeys(names))


def with_peers(models: list[str]) -> list[str]:
    """``--peers``: the models plus ``pop`` (popularity, the peer the project has itself);
    a ``ConfigError`` when River (the other peers) is not installed."""
    from .peers import PeerUnavailable, river_version

    try:
        river_version()
    except PeerUnavailable as exc:
        raise ConfigError(str(exc)) from None
    return list(dict.fromkeys(models + ["pop"]))


def model_configs(models: list[str], config_path: str | None = None, flags: dict | None = None,
                  env=None) -> dict[str, RunConfig]:
    """One validated backtest configuration per model: the settings merged as
    ``load_config`` merges them (flags > RECSYS_* > TOML > defaults), each model with the
    model parameters it declares."""
    env = os.environ if env is None else env
    layers = [from_toml(config_path) if config_path else {}, from_env(env), dict(flags or {})]
    params: dict = {}
    flat: dict = {}
    for layer in layers:
        params.update(layer.pop("params", {}) or {})
        layer.pop("kafka", None)
        flat.update(layer)
    flat.pop("model", None)  # the models are --models
    base = load_config(None, env={}, flags=flat, command=BACKTEST)
    out, used = {}, set()
    for m in models:
        declared = {f.name for f in fields(MODELS[m].params_type())}
        mine = {k: v for k, v in params.items() if k in declared}
        used |= set(mine)
        out[m] = replace(base, model=m, params=mine).validate(BACKTEST)
    unused = sorted(set(params) - used)
    if unused:
        raise ConfigError(f"--param {unused[0]}: applies to none of the models {', '.join(models)}")
    return out


def _vm(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _peak_rss() -> int:
    peak = _vm("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return peak


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def run_compare(cfgs: dict[str, RunConfig], b: BacktestConfig, started: float | None = None,
                on_summary=None, peers: bool = False) -> CompareResult:
    """Load once, replay each model (``cfgs``, from ``model_configs``), write the report
    with ``b.out``; ``on_summary(model, summary)`` as each model finishes. ``peers``: River's
    BiasedMF and FTRL too, on the same events (``peers``)."""
    started = time.perf_counter() if started is None else started
    if b.lists:
        raise BacktestError("--lists: compare writes no lists; run backtest --model M --lists FILE")
    first = next(iter(cfgs.values()))
    loaded = load(first, b, any_model=True)
    dead_letter = write_dead_letter_file(loaded, b)
    quiet_b = replace(b, out="", lists="", no_baseline=True)
    summaries, curves, latest = {}, {}, {}
    origin = started + loaded.load_s  # the first model's startup_s counts the imports, as backtest's
    window = b.window_events or curves_window(len(loaded.events) * b.passes)  # one x axis for every model
    for model, cfg in cfgs.items():
        mine, left_out = restrict(loaded, cfg)
        reset = _reset_peak()
        _log(f"compare: model {model} ...", b.quiet)
        summary, res, latest[model] = evaluate(cfg, quiet_b, mine, dead_letter, origin, invalid=left_out)
        summary["peak_rss_mb"] = round(_peak_rss() / 2**20, 1)
        summary["memory"] = RSS_RESET if reset else RSS_CUMULATIVE
        curves[model] = res.acc.curves(window)
        summaries[model] = summary
        if on_summary is not None:
            on_summary(model, summary)
        origin = time.perf_counter()
    if peers:
        from .peers import PEERS, run_peer

        k = first.k
        like = getattr(cfgs.get("ftrl", first).model_params(), "like_threshold", 4.0)
        for name in PEERS:
            reset = _reset_peak()
            _log(f"compare: peer {name} ...", b.quiet)
            t0 = time.perf_counter()
            summary, acc = run_peer(name, loaded.events, first.seed, k, like_threshold=like, quiet=b.quiet)
            summary.update(data=loaded.name, format=loaded.format, k=k, seed=first.seed,
                           seconds=round(time.perf_counter() - t0, 3),
                           peak_rss_mb=round(_peak_rss() / 2**20, 1), memory=RSS_RESET if reset else RSS_CUMULATIVE)
            curves[name] = acc.curves(window)
            summaries[name] = summary
            if on_summary is not None:
                on_summary(name, summary)
    result = CompareResult(summaries, curves, loaded, dead_letter, latest=latest)
    if b.out:
        result.report = write_compare_report(b.out, summaries, curves, window, dead_letters=len(loaded.errors),
                                             dead_letter_path=dead_letter, latest=latest)
        _log(f"wrote {result.report}", b.quiet)
    return result
