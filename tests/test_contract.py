"""The contract every model of the registry keeps, checked for each model of ``MODELS``.

The models are discovered from ``recsys_stream.models.MODELS`` (as River's ``river/checks``
runs over every estimator): a model added to the registry is checked here without editing
this file. What is checked (docs/contract.md says why each one matters):

- the model's declarations: parameters that survive the checkpoint manifest, kernel steps
  registered for its state type, boundary values of its parameters that run;
- seed determinism: the same seed gives the same predictions, lists and state digest; another
  seed changes them exactly when the model draws random numbers;
- batch-size invariance: the same stream in other batches gives the same results (one worker);
- a snapshot to LMDB mid-stream, restored into a fresh flow, continues exactly as the
  uninterrupted run, and a restored shard recommends what the original did;
- reads (``recommend``, ``inspect``) leave the state as it was;
- the list emitted at an event is ``recommend()`` right after it, at the same version;
- divergence raises ``ModelDivergedError`` (and the CLI says so in one line);
- one and two workers complete with sane metrics; ``--quantized`` end to end.

Streams are small and generated (``recsys_stream.generate``), so the suite stays fast.
"""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
from dataclasses import fields
from datetime import timedelta
from pathlib import Path

import numba
import numpy as np
import orjson
import pytest
from bytewax.recovery import RecoveryConfig
from bytewax.run import cli_main

import flows.recsys
from flows.backtest import run_backtest
from flows.recsys import build_flow
from recsys_stream.backtest import backtest
from recsys_stream.checkpoint import Checkpointer, committed, digest
from recsys_stream.ckdir import prepare_checkpoint_dir
from recsys_stream.config import RUN
from recsys_stream.configload import load_config
from recsys_stream.events import EventBatch
from recsys_stream.generate import GeneratorSettings, generate
from recsys_stream.inspect import committed_handles, describe
from recsys_stream.io.replay import ReplaySource, RunClock
from recsys_stream.io.sinks import ListsSink, MetricsSink
from recsys_stream.kernels.driver import STEP_NAMES, registered_steps
from recsys_stream.metrics import MetricsAccumulator
from recsys_stream.models import MODELS, ModelDivergedError
from recsys_stream.settings import BacktestSettings, CheckpointSettings, FlowSettings
from recsys_stream.shard import Shard, ShardSettings
from recsys_stream.state import ROW, UserState
from recsys_stream.storage import ITEMS, USERS, Store

ROOT = Path(__file__).resolve().parent.parent
NAMES = list(MODELS)  # discovered: every model of the registry, in its order
K = 10

# Contract properties a model is known to break today: (model, property) -> the bug. The
# test runs anyway and must fail (strict xfail): once the bug is fixed it passes, and the
# entry has to go.
KNOWN_BUGS: dict = {}  # (model, property) -> why it fails today: strict xfail until fixed


def models(prop: str) -> list:
    """Every registered model, those known to break ``prop`` marked strict xfail."""
    out = []
    for name in NAMES:
        bug = KNOWN_BUGS.get((name, prop))
        out.append(pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=bug)) if bug else name)
    return out


def test_the_registry_is_what_the_suite_runs_over():
    assert NAMES, "no models registered"
    for name, cls in MODELS.items():
        assert cls.name == name, f"MODELS[{name!r}] is {cls.__name__}, named {cls.name!r}"


# -- streams and helpers --------------------------------------------------------------------


@pytest.fixture(scope="module")
def stream() -> EventBatch:
    """Few users with many events each (versions past 100: the hybrid's activity buckets
    change at 1, 5, 20 and 100), enough items for full lists."""
    log = generate(GeneratorSettings(events=1_500, users=25, items=120, seed=9))
    _u, counts = np.unique(log.user, return_counts=True)
    assert counts.max() > 100
    return log


@pytest.fixture(scope="module")
def wide() -> EventBatch:
    """More users and items, for the flows."""
    return generate(GeneratorSettings(events=3_000, users=200, items=150, seed=5))


def shard_settings(model: str, seed: int = 7, **kw) -> ShardSettings:
    return ShardSettings(model=model, seed=seed, k=K, **kw)


def run_shard(model: str, log: EventBatch, step: int, seed: int = 7, **kw):
    """``log`` through a new shard in batches of ``step``, a list after every event: (shard,
    predictions, positions, list records as tuples)."""
    sh = Shard(0, shard_settings(model, seed, lists="all", **kw))
    preds, poss, lists = [], [], []
    for a in range(0, len(log), step):
        r = sh.process(log.slice(a, a + step))
        preds.append(r.pred)
        poss.append(r.pos)
        lists += [(x["user"], x["version"], x["items"], x["scores"]) for x in r.lists]
    return sh, np.concatenate(preds), np.concatenate(poss), lists


def stored_digest(sh: Shard, path: Path) -> str:
    """The checkpoint digest (``checkpoint.digest``: keyed by ids, the stored arrays) of a
    shard never checkpointed before, through a new LMDB store (once per shard: the snapshot
    clears the rows' dirty marks, so a second one holds only what changed since)."""
    st = Store(str(path), map_size=1 << 28)
    try:
        ck = Checkpointer(sh, st)
        gen = ck.snapshot(sh.filter.snapshot())
        return digest(st, {0: gen})[0]
    finally:
        st.close()


def state_values(sh: Shard, skip: tuple = ()) -> dict:
    """Every array of both sides over the rows in use (stored or not), the neighbour
    lists, the histories and the seen pairs' count: independent of capacities and pool
    layouts, so two states compare by value."""
    out = {}
    for tag, side in (("user", sh.users), ("item", sh.items)):
        n = len(side)
        a = side.arrays
        for name, spec in a.specs.items():
            if name in skip:
                continue
            arr = a[name][:n] if spec.kind == ROW else a[name]
            out[f"{tag}.{name}"] = (arr.dtype.str, arr.shape, arr.tobytes())
    for name, pool in sh.items.pools.items():
        for i in range(len(sh.items)):
            js, cs = pool.row(sh.items.arrays, i)
            out[f"pool.{name}.{i}"] = (js.tobytes(), cs.tobytes())
    for u in range(len(sh.users)):
        out[f"history.{u}"] = sh.users.items_of(u).tobytes()
    out["seen"] = int(sh.users.seen.count[0])
    return out


def differing(a: dict, b: dict) -> list:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def same(x, y) -> bool:
    """Two arrays equal bit for bit (NaN where not evaluated equals NaN)."""
    return x.dtype == y.dtype and x.shape == y.shape and x.tobytes() == y.tobytes()


def draws_random_numbers(sh: Shard) -> bool:
    """Whether the model is random: its item rows start from seeded draws, or its kernels
    advanced a user's random stream (compared with a fresh one of the same users)."""
    if any(s.init_std > 0 for s in sh.items.arrays.specs.values()):
        return True
    n = len(sh.users)
    fresh = UserState([], sh.settings.recent, sh.settings.seed)
    fresh.rows(np.array(sh.users.ids.ids[:n], dtype=object))
    return not same(fresh.arrays["rng"][:n], sh.users.arrays["rng"][:n])


# -- declarations -----------------------------------------------------------------------------


@pytest.mark.parametrize("model", models("declarations"))
def test_declarations(model):
    cls = MODELS[model]
    p = cls.params_type()
    # a checkpoint's manifest and ``inspect`` rebuild the parameters from their JSON
    assert cls.params_type(**orjson.loads(orjson.dumps(p.as_dict()))) == p
    assert p.replace(**p.as_dict()) == p
    with pytest.raises(ValueError, match="does not apply"):
        p.replace(no_such_parameter=1)
    sh = Shard(0, shard_settings(model))
    user = [s.name for s in sh.model.user_specs()]
    item = [s.name for s in sh.model.item_specs()]
    assert len(set(user)) == len(user) and len(set(item)) == len(item)
    # the kernel steps are registered for the type of the model's state structure
    state = sh.model.kernel_state(sh.users, sh.items, K)
    steps = registered_steps(type(numba.typeof(state)))
    assert set(steps) <= set(STEP_NAMES)
    assert {"rank", "recommend"} <= set(steps), "every model ranks (metrics) and recommends (lists)"
    assert ("predict" in steps) == (cls.predicts_rating or cls.predicts_like)
    assert not (cls.predicts_rating and cls.predicts_like)


def boundary_values(cls) -> list:
    """(parameter, value) at each edge the parameters' validation accepts: 0 for a
    non-negative one, 0 and 1 for one in [0, 1], the smallest for a positive integer."""
    p = cls.params_type()
    out = []
    for f in fields(p):
        typ = type(getattr(p, f.name))
        if f.name in p.NON_NEGATIVE:
            out.append((f.name, typ(0)))
        if f.name in p.UNIT:
            out += [(f.name, typ(0)), (f.name, typ(1))]
        if f.name in p.POSITIVE and typ is int:
            out.append((f.name, 1))
    return out


@pytest.mark.parametrize("model", models("boundary_parameters"))
def test_every_accepted_parameter_value_runs(model, stream):
    """What validation accepts, the kernels run: an edge value may make the model diverge
    (the named error), never fail otherwise (a ZeroDivisionError, an IndexError)."""
    cls = MODELS[model]
    log = stream.slice(0, 300)
    for name, value in boundary_values(cls):
        sh = Shard(0, shard_settings(model, params=cls.params_type().replace(**{name: value}), lists="last"))
        try:
            sh.process(log)
            sh.recommend(log.user[0])
        except ModelDivergedError:
            pass
        except Exception as exc:  # noqa: BLE001 - the point: nothing else may come out
            pytest.fail(f"{model} with {name}={value!r}: {type(exc).__name__}: {exc}")


# -- determinism ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", models("seed"))
def test_seed_determinism(model, stream, tmp_path):
    a, pa, qa, la = run_shard(model, stream, 200, seed=7)
    b, pb, qb, lb = run_shard(model, stream, 200, seed=7)
    c, pc, qc, lc = run_shard(model, stream, 200, seed=8)
    assert same(pa, pb) and same(qa, qb) and la == lb
    if draws_random_numbers(a):
        assert not (same(pa, pc) and same(qa, qc) and la == lc), f"{model} draws random numbers, but the seed " \
                                                                 "changes nothing"
    else:
        # nothing random: the seed only seeds the users' (unused) random streams
        assert same(pa, pc) and same(qa, qc) and la == lc
        skip = ("rng", "seed")
        assert differing(state_values(a, skip=skip), state_values(c, skip=skip)) == []
    assert stored_digest(a, tmp_path / "a") == stored_digest(b, tmp_path / "b")


def assert_batch_size_invariant(run, n: int, tmp_path: Path) -> None:
    """``run(step)`` (a shard, predictions, positions, lists, as ``run_shard``) over the same
    stream of ``n`` events gives the same results in batches of 1, 97 and all of it."""
    a, pa, qa, la = run(n)
    da = stored_digest(a, tmp_path / "a")
    for step in (1, 97):
        b, pb, qb, lb = run(step)
        assert same(pa, pb) and same(qa, qb), step
        assert la == lb, step
        assert stored_digest(b, tmp_path / f"b{step}") == da, step


@pytest.mark.parametrize("model", models("batch_size"))
def test_batch_size_invariance(model, stream, tmp_path):
    assert_batch_size_invariant(lambda step: run_shard(model, stream, step), len(stream), tmp_path)


@pytest.mark.parametrize("model", models("flow_batch_size"))
def test_the_dataflow_with_one_worker_is_batch_size_invariant(model, wide, tmp_path):
    got = []
    for bs in (250, 1024):
        shard = shard_settings(model, lists="all", rank=True)
        settings = BacktestSettings(flow=FlowSettings(shard=shard), workers=1, batch_size=bs, progress=False)
        path = tmp_path / f"lists-{bs}.jsonl"
        res = run_backtest(wide, settings, lists_path=str(path))
        recs = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        lists = [(r["user"], r["version"], r["items"], r["scores"]) for r in recs]
        _seq, pred, pos = per_event([res])
        got.append((res.acc.finish(), pred, pos, lists))
    (ma, pa, qa, la), (mb, pb, qb, lb) = got
    assert ma == mb and same(pa, pb) and same(qa, qb)
    assert len(la) == len(wide) and la == lb


# -- snapshot and restore ---------------------------------------------------------------------


class Run:
    """What a flow run with a checkpoint directory hands back."""

    def __init__(self, acc, lists):
        self.acc, self.lists = acc, lists
        self.errors: list[str] = []  # ERROR log lines of the flow (when collected)


def checkpointed_flow(root: Path, model: str, log: EventBatch, batch_size: int = 400, params=None) -> Run:
    """``log`` through the job's dataflow (user key groups, item owners, Bytewax recovery)
    with the checkpoint directory ``root``: a first run, or a resume from what is there
    (``params``: the model's, else its defaults)."""
    cfg = load_config(None, env={}, flags={"model": model, "checkpoint_dir": str(root), "seed": 7}, command=RUN)
    n_shards, rec = prepare_checkpoint_dir(cfg)
    ck = CheckpointSettings(str(root / "state.lmdb"), map_gb=0.25, root=str(root))
    fs = FlowSettings(shard=shard_settings(model, lists="all", rank=True, params=params), n_shards=n_shards,
                      n_buckets=cfg.item_buckets, checkpoint=ck)
    m = MODELS[model]
    acc = MetricsAccumulator(k=K, rating=m.predicts_rating, like=m.predicts_like)
    clock = RunClock()
    lists: list = []
    sink = ListsSink(keep_latest=False, on_record=lists.append)
    flow = build_flow(fs, ReplaySource(log, batch_size=batch_size, clock=clock),
                      metrics_sink=MetricsSink(acc, clock, progress=False), lists_sink=sink)
    try:
        cli_main(flow, workers_per_process=1, epoch_interval=timedelta(seconds=0.05),
                 recovery_config=RecoveryConfig(str(rec)))
    finally:
        # the flow keeps one LMDB environment per directory and process open: close it, so
        # that ``inspect`` (read only) can open the directory as another process would
        st = flows.recsys._STORES.pop(ck.path, None)
        if st is not None:
            st.close()
    return Run(acc, lists)


def committed_digest(root: Path) -> str:
    st = Store(str(root / "state.lmdb"), readonly=True)
    try:
        return digest(st, committed(st, committed_handles(str(root))))[0]
    finally:
        st.close()


def per_event(runs: list) -> tuple:
    """(sequence numbers, predictions, positions) of the runs' events, in stream order."""
    seq = np.concatenate([s for r in runs for s in r.acc.seq])
    pred = np.concatenate([p for r in runs for p in r.acc.pred])
    pos = np.concatenate([p for r in runs for p in r.acc.pos])
    order = np.argsort(seq, kind="stable")
    return seq[order], pred[order], pos[order]


def lists_of(runs: list[Run]) -> list:
    return [(x["user"], x["version"], x["items"], x["scores"]) for r in runs for x in r.lists]


@pytest.fixture(scope="module")
def round_trips(wide, tmp_path_factory):
    """Per model: the stream through the checkpointed dataflow uninterrupted, and stopped
    after 1,300 events (a final snapshot) then resumed from the directory with the rest."""
    out = {}
    flow_log = logging.getLogger("recsys_stream.flow")
    for model in NAMES:
        d = tmp_path_factory.mktemp(f"ck-{model}")
        whole = checkpointed_flow(d / "whole", model, wide)
        first = checkpointed_flow(d / "split", model, wide.slice(0, 1_300))
        errors = Collect(logging.ERROR)
        flow_log.addHandler(errors)
        try:
            rest = checkpointed_flow(d / "split", model, wide)  # resumes at the committed position
        finally:
            flow_log.removeHandler(errors)
        rest.errors = errors.messages
        out[model] = (d, whole, first, rest)
    return out


class Collect(logging.Handler):
    def __init__(self, level):
        super().__init__(level)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("model", models("restore_flow"))
def test_snapshot_restore_continue_equals_the_uninterrupted_run(model, wide, round_trips):
    d, whole, first, rest = round_trips[model]
    assert first.acc.events == 1_300 and rest.acc.events == len(wide) - 1_300  # nothing replayed, nothing lost
    sa, pa, qa = per_event([whole])
    sb, pb, qb = per_event([first, rest])
    assert np.array_equal(sa, sb) and same(pa, pb) and same(qa, qb)
    assert lists_of([whole]) == lists_of([first, rest])  # items, scores and versions
    assert committed_digest(d / "whole") == committed_digest(d / "split")


def test_a_clean_resume_reports_no_missing_events(round_trips):
    for model, (_d, _whole, _first, rest) in round_trips.items():
        assert [m for m in rest.errors if "missing" in m] == [], model


@pytest.mark.parametrize("model", models("restored_scores"))
def test_a_restored_shard_recommends_what_the_original_does(model, stream, tmp_path):
    """Before any new event: users come back lazily, on the read itself."""
    st = Store(str(tmp_path / "s"), map_size=1 << 28)
    a = Shard(0, shard_settings(model))
    a.checkpointer = Checkpointer(a, st)
    a.process(stream)
    gen = a.checkpointer.snapshot(a.filter.snapshot())
    b = Shard(0, shard_settings(model))
    b.checkpointer = Checkpointer(b, st)
    b.filter.restore(b.checkpointer.restore(gen))
    for user in dict.fromkeys(stream.user):
        ra, rb = a.recommend(user), b.recommend(user)
        assert (rb["items"], rb["version"], rb["known"]) == (ra["items"], ra["version"], True), user
        assert rb["scores"] == ra["scores"], user
    st.close()


def item_values(sh: Shard) -> dict:
    """The item side's stored arrays over the rows in use and every row's neighbours."""
    vals = state_values(sh)
    stored = {f"item.{s.name}" for s in sh.items.arrays.stored()}
    return {k: v for k, v in vals.items() if k in stored or k.startswith("pool.")}


@pytest.mark.parametrize("model", [m for m in NAMES if "dense_items" in MODELS[m].params_type().__dataclass_fields__])
def test_a_restore_gives_back_every_item_row_and_neighbour_list(model, stream, tmp_path):
    """Neighbour lists (not the dense matrix: ``dense_items=0``) and the item rows come back
    value for value, through the batched decoding of the item records."""
    params = MODELS[model].params_type().replace(dense_items=0)
    st = Store(str(tmp_path / "s"), map_size=1 << 28)
    a = Shard(0, shard_settings(model, params=params))
    a.checkpointer = Checkpointer(a, st)
    a.process(stream)
    assert not next(iter(a.items.pools.values())).is_dense
    gen = a.checkpointer.snapshot(a.filter.snapshot())
    b = Shard(0, shard_settings(model, params=params))
    b.checkpointer = Checkpointer(b, st)
    b.filter.restore(b.checkpointer.restore(gen))
    va, vb = item_values(a), item_values(b)
    assert sum(k.startswith("pool.") and v[0] != b"" for k, v in va.items()) > 10
    assert differing(va, vb) == []
    st.close()


# -- reads ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", models("read_only"))
def test_a_read_leaves_the_state_unchanged(model, stream, tmp_path):
    sh = Shard(0, shard_settings(model))
    st = Store(str(tmp_path / "s"), map_size=1 << 28)
    sh.checkpointer = Checkpointer(sh, st)
    sh.process(stream.slice(0, 1_000))
    g1 = sh.checkpointer.snapshot(sh.filter.snapshot())
    before = state_values(sh)
    for user in list(dict.fromkeys(stream.user)) + ["nobody"]:
        sh.recommend(user)
    assert differing(before, state_values(sh)) == []
    staged = sh.checkpointer.stage(sh.filter.snapshot())
    assert [r[:2] for r in staged.records if r[0] in (USERS, ITEMS)] == []  # nothing marked for the checkpoint
    g2 = staged.write(st)
    assert digest(st, {0: g1})[0] == digest(st, {0: g2})[0]
    st.close()


@pytest.mark.parametrize("model", models("inspect_read_only"))
def test_inspect_leaves_the_checkpoint_unchanged(model, wide, round_trips):
    d, whole, _first, _rest = round_trips[model]
    root = d / "whole"
    data = root / "state.lmdb" / "data.mdb"
    mdb = hashlib.blake2b(data.read_bytes()).hexdigest()
    before = describe(str(root), with_digest=True)["digest"]
    assert before == committed_digest(root)
    last = whole.lists[-1]
    assert last["user"] == wide.user[-1]  # the stream's last event: no event after it changed the state
    got = describe(str(root), user=last["user"])["user"]
    assert (got["version"], got["list"]) == (last["version"], last["items"])
    describe(str(root), item=wide.item[0])
    counts = describe(str(root), counts=True)["counts"]["users"]
    users, n = np.unique(wide.user, return_counts=True)
    assert counts == dict(zip(users.tolist(), n.tolist()))
    assert describe(str(root), with_digest=True)["digest"] == before
    assert hashlib.blake2b(data.read_bytes()).hexdigest() == mdb


@pytest.mark.parametrize("model", models("list_is_recommend"))
def test_the_emitted_list_is_recommend_at_the_same_version(model, stream):
    """One event at a time: the list computed for an event equals what a read returns right
    after it (items, scores and version)."""
    sh = Shard(0, shard_settings(model, lists="all"))
    versions = set()
    for e in range(len(stream)):
        (rec,) = sh.process(stream.slice(e, e + 1)).lists
        got = sh.recommend(stream.user[e])
        assert (got["items"], got["scores"], got["version"]) == (rec["items"], rec["scores"], rec["version"]), \
            (e, rec["user"], rec["version"])
        versions.add(rec["version"])
    assert {1, 5, 20, 100} <= versions


# -- divergence -------------------------------------------------------------------------------


def explosive(cls) -> dict:
    """Every positive float parameter (the models' step sizes: lr, alpha, ...) near the
    largest float."""
    p = cls.params_type()
    return {f.name: 1e308 for f in fields(p) if type(getattr(p, f.name)) is float and f.name in p.POSITIVE}


@pytest.mark.parametrize("model", models("divergence"))
def test_divergence_raises_the_named_error(model, stream):
    cls = MODELS[model]
    over = explosive(cls)
    sh = Shard(0, shard_settings(model, params=cls.params_type().replace(**over)))
    if not over:
        # nothing to blow up: the largest values the readers accept keep the state finite
        v = stream.value.copy()
        v[::2] = 1e6
        log = EventBatch(stream.user, stream.item, stream.ts, stream.etype, v, stream.seq, stream.part, stream.offset)
        sh.process(log)
        for tag, side in (("user", sh.users), ("item", sh.items)):
            for name, a in side.arrays.arrays.items():
                live = a[: len(side)] if side.arrays.specs[name].kind == ROW else a
                if a.dtype.kind == "f":
                    assert np.isfinite(live).all(), f"{tag} array {name} is not finite"
        return
    with pytest.raises(ModelDivergedError, match="NaN/Inf") as info:
        sh.process(stream)
    err = info.value
    e = int(np.flatnonzero(stream.seq == err.seq)[0])
    assert (err.model, err.user, err.item) == (model, stream.user[e], stream.item[e])
    # and through the dataflow (Bytewax wraps a worker's exception): the same error
    with pytest.raises(ModelDivergedError, match=f"model {model!r} diverged"):
        backtest("", model=model, params=over, gen_events=500, gen_users=50, gen_items=60, quiet=True,
                 no_baseline=True, show=0)


def cli(*args):
    return subprocess.run([sys.executable, "-m", "recsys_stream.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)


def test_a_diverged_backtest_is_one_line_naming_an_event_of_the_data():
    model = next(n for n in NAMES if explosive(MODELS[n]))
    params = [f"--param={k}={v!r}" for k, v in explosive(MODELS[model]).items()]
    proc = cli("backtest", "--model", model, *params, "--gen-events", "500", "--gen-users", "50", "--gen-items", "60",
               "--no-baseline", "--quiet", "--show", "0")
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"recsys-stream: error: model {model!r} diverged"), last
    assert "(user 'u" in last and "item 'i" in last  # a user and item of the generated data, not the warm-up's


# -- workers ----------------------------------------------------------------------------------


def sane(summary: dict, cls) -> None:
    if cls.predicts_rating:
        assert 0.0 < summary["rmse"] < 2.0 and 0.0 < summary["mae"] <= summary["rmse"]
    if cls.predicts_like:
        assert 0.0 < summary["logloss"] < 1.0 and 0.5 < summary["auc"] <= 1.0
    hr, mrr, ndcg = summary[f"hr@{K}"], summary[f"mrr@{K}"], summary[f"ndcg@{K}"]
    assert 0.0 < mrr <= ndcg <= hr <= 1.0
    assert 0.0 < summary[f"coverage@{K}"] <= 1.0


@pytest.mark.parametrize("model", models("workers"))
def test_one_and_two_workers(model):
    cls = MODELS[model]
    gs = GeneratorSettings(events=4_000, users=300, items=150, seed=42)
    log = generate(gs)
    runs = {}
    for workers in (1, 2):
        res = backtest("", model=model, workers=workers, seed=42, gen_events=gs.events, gen_users=gs.users,
                       gen_items=gs.items, batch_size=250, rank=True, quiet=True, no_baseline=True, show=0)
        s = res.summary
        assert s["workers"] == workers and s["shards"] == workers
        assert s["events"] == len(log) and s["users"] == len(set(log.user)) and s["items"] == len(set(log.item))
        shard_users = res.run.acc.shard_users
        assert len(shard_users) == workers and all(n > 0 for n in shard_users.values())
        sane(s, cls)
        runs[workers] = s
    one, two = runs[1], runs[2]
    # the workers share the item side (updates every batch of 250): close to one worker
    assert two[f"hr@{K}"] >= 0.85 * one[f"hr@{K}"]
    if cls.predicts_rating:
        assert two["rmse"] <= 1.05 * one["rmse"]
    if cls.predicts_like:
        assert two["auc"] >= one["auc"] - 0.03


QUANTIZED = [n for n in NAMES if "quantized" in {f.name for f in fields(MODELS[n].params_type)}]


def test_some_model_is_quantizable():
    assert QUANTIZED


@pytest.mark.parametrize("model", QUANTIZED)
def test_quantized_end_to_end(model):
    gen = ["--gen-events", "4000", "--gen-users", "200", "--gen-items", "150"]
    proc = cli("backtest", "--model", model, "--quantized", "--rank", *gen, "--no-baseline", "--quiet", "--show", "0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    q = orjson.loads(proc.stdout.strip().splitlines()[-1])
    assert q["params"]["quantized"] is True and q["events"] == 4000
    sane(q, MODELS[model])
    exact = backtest("", model=model, rank=True, gen_events=4000, gen_users=200, gen_items=150, quiet=True,
                     no_baseline=True, show=0).summary
    assert exact["params"]["quantized"] is False
    rank_keys = [f"hr@{K}", f"mrr@{K}", f"ndcg@{K}"]
    # int8 scores: the ranking moves a little (the quantized path ran), not much
    assert [q[key] for key in rank_keys] != [exact[key] for key in rank_keys]
    for key in rank_keys:
        assert abs(q[key] - exact[key]) <= 0.1 * exact[key], key
    if MODELS[model].predicts_rating:
        assert q["rmse"] == exact["rmse"]  # predictions read the float factors
