"""The dataflow: prequential order, determinism, two workers, and the shard placement."""

from __future__ import annotations

import numpy as np
import pytest

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.outputs import DynamicSink, StatelessSinkPartition
from bytewax.run import cli_main
from bytewax.testing import TestingSource

from conftest import make_batch
from flows.backtest import run_backtest
from recsys_stream.settings import BacktestSettings, FlowSettings
from recsys_stream.generate import GeneratorSettings, generate
from recsys_stream.models import model_params
from recsys_stream.routing import bytewax_worker, shard_keys
from recsys_stream.shard import ShardSettings


def backtest(log, model="itemknn", workers=1, batch_size=512, seed=42, lists="none", **params):
    shard = ShardSettings(model=model, params=model_params(model, **params), seed=seed, lists=lists)
    settings = BacktestSettings(flow=FlowSettings(shard=shard, n_shards=workers), workers=workers,
                                batch_size=batch_size, progress=False)
    return run_backtest(log, settings, keep_lists=lists != "none")


def test_event_is_scored_before_it_is_learned():
    # pop: u1's first A is new to the stream (a miss); u2's A is then the most popular item
    run = backtest(make_batch(["u1", "u2"], ["A", "A"]), model="pop")
    assert run.acc.finish()["hr@10"] == 0.5
    assert np.concatenate(run.acc.pos).tolist() == [-1, 0]
    # mf: the first prediction is the prior mid-point, whatever the rating; learning moves the next
    log = make_batch(["u", "u", "u"], ["i", "i", "i"], values=np.array([5.0, 5.0, 5.0]))
    run = backtest(log, model="mf", dim=4)
    pred = np.concatenate(run.acc.pred)
    assert pred[0] == 3.0  # learning first would have predicted 5
    assert pred[1] == 5.0  # the running mean now holds the first rating


@pytest.fixture(scope="module")
def planted():
    return generate(GeneratorSettings(events=40_000, users=1_500, items=600, seed=11))


@pytest.mark.parametrize("model", ["itemknn", "implicit", "hybrid"])
def test_deterministic_with_one_worker_whatever_the_batching(planted, model):
    log = planted.slice(0, 8_000)
    a = backtest(log, model=model, batch_size=333, lists="last")
    b = backtest(log, model=model, batch_size=1024, lists="last")
    assert a.acc.finish() == b.acc.finish()
    assert np.array_equal(np.concatenate(a.acc.pos), np.concatenate(b.acc.pos))
    latest_a = {u: r["items"] for u, r in a.lists.latest.items()}
    latest_b = {u: r["items"] for u, r in b.lists.latest.items()}
    assert latest_a == latest_b
    if model != "itemknn":  # the seed matters where there are random draws
        c = backtest(log, model=model, batch_size=333, seed=43)
        assert c.acc.finish() != a.acc.finish()


def test_planted_structure_learned_models_beat_baselines(planted):
    pop = backtest(planted, model="pop").acc.finish()["hr@10"]
    for model in ("implicit", "itemknn", "hybrid"):
        hr = backtest(planted, model=model).acc.finish()["hr@10"]
        assert hr > 1.5 * pop, (model, hr, pop)
    mf = backtest(planted, model="mf")
    rmse = mf.acc.finish()["rmse"]
    # the prequential global-mean predictor on the same stream
    v = planted.value.astype(np.float64)
    running = np.concatenate(([3.0], np.cumsum(v)[:-1] / np.arange(1, len(v))))
    base = float(np.sqrt(np.mean((running - v) ** 2)))
    assert rmse < 0.95 * base, (rmse, base)


def test_two_workers_each_shard_owns_its_users(planted):
    log = planted.slice(0, 10_000)
    run = backtest(log, model="itemknn", workers=2)
    res = run.acc.finish()
    assert run.acc.events == len(log)
    assert len(run.acc.shard_users) == 2 and all(n > 0 for n in run.acc.shard_users.values())
    assert res["users"] == len(set(log.user))  # disjoint: no user is in two shards
    assert res["hr@10"] > 0.2


class _WorkerSink(DynamicSink):
    def __init__(self):
        self.seen = {}

    def build(self, step_id, worker_index, worker_count):
        sink = self

        class Part(StatelessSinkPartition):
            def write_batch(self, items):
                for key, _ in items:
                    sink.seen[key] = worker_index

        return Part()


class _Echo(op.StatefulBatchLogic):
    def on_batch(self, values):
        return [values[0]], False

    def snapshot(self):
        return None


@pytest.mark.parametrize("workers", [2, 3])
def test_shard_keys_land_one_per_worker(workers):
    keys = list(shard_keys(workers)) + [f"probe-{j}" for j in range(12)]
    flow = Dataflow("placement")
    s = op.input("in", flow, TestingSource(keys))
    k = op.key_on("key", s, lambda x: x)
    out = op.stateful_batch("echo", k, lambda _resume: _Echo())
    sink = _WorkerSink()
    op.output("out", out, sink)
    cli_main(flow, workers_per_process=workers)
    for j, key in enumerate(shard_keys(workers)):
        assert sink.seen[key] == j
    for key in keys:
        assert sink.seen[key] == bytewax_worker(key, workers)
