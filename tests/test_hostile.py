"""Hostile input (issue #10): no byte string on the input, in a file or on a topic, stops
the job or the backtest, or makes a kernel or a score non-finite, and every id that passes
validation checkpoints. Properties are generated with Hypothesis; what goes through the
broker in production goes through the real broker here (tests/test_hostile_kafka.py)."""

from __future__ import annotations

import math
import subprocess
import sys

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_stream.events import MAX_ID_LEN
from recsys_stream.io.eventjson import MAX_ABS_VALUE, TS_MAX, TS_MIN, EventError, parse_event_bytes
from recsys_stream.io.kafka import RawBatch
from recsys_stream.io.parse import CatalogParser, EventParser
from recsys_stream.io.readers import read_events, write_dead_letters

import hostile

ROOT = hostile.ROOT


def ev(**kw) -> bytes:
    obj = {"user": "u", "item": "i", "ts": 1.7e9, "type": "rating", "value": 4.0}
    obj.update(kw)
    return orjson.dumps(obj)


# -- items 1 and 6: values and times that would overflow a kernel or a score ------------------


@pytest.mark.parametrize("raw,reason", [
    (ev(value=1e39), "outside the allowed range"),  # finite in float64, inf in float32 (item 1)
    (ev(value=-1e39), "outside the allowed range"),
    (ev(value=MAX_ABS_VALUE * 1.0000001), "outside the allowed range"),
    (b'{"user":"u","item":"i","ts":1,"type":"view","value":NaN}', "JSON"),
    (b'{"user":"u","item":"i","ts":1,"type":"view","value":Infinity}', "JSON"),
    (b'{"user":"u","item":"i","ts":1,"type":"view","value":1e400}', "JSON"),
    (ev(ts=1e300), "outside the allowed range"),  # item 6
    (ev(ts=-1), "outside the allowed range"),
    (ev(ts=1e20), "outside the allowed range"),
    (ev(ts=TS_MAX), "outside the allowed range"),
    (ev(ts="9999-12-31T23:59:59Z"), "outside the allowed range"),
    (ev(ts="0001-01-01T00:00:00"), "outside the allowed range"),
])
def test_item1_item6_values_and_times_out_of_bounds_are_dead_letters(raw, reason):
    with pytest.raises(EventError, match=reason):
        parse_event_bytes(raw)
    batch, dead = EventParser()(RawBatch("t", 0, [b"k"], [raw], [7], 0.0))
    assert batch is None and len(dead) == 1 and reason in dead[0].reason and dead[0].offset == 7


def test_bounds_are_inclusive_where_documented():
    assert parse_event_bytes(ev(value=MAX_ABS_VALUE))[4] == MAX_ABS_VALUE
    assert parse_event_bytes(ev(value=-MAX_ABS_VALUE, type="view"))[4] == -MAX_ABS_VALUE
    assert parse_event_bytes(ev(ts=TS_MIN))[2] == TS_MIN
    assert parse_event_bytes(ev(ts=math.nextafter(TS_MAX, 0)))[2] < TS_MAX


def test_item1_a_models_rating_range_is_applied_to_ratings_only():
    vr = (1.0, 5.0)
    with pytest.raises(EventError, match="rating 7 is outside the model's range 1..5"):
        parse_event_bytes(ev(value=7), vr)
    assert parse_event_bytes(ev(value=5), vr)[4] == 5.0
    assert parse_event_bytes(ev(value=7, type="click"), vr)[4] == 7.0  # not a rating: the global bound only
    batch, dead = EventParser(value_range=vr)(RawBatch("t", 0, [None] * 2, [ev(value=0.5), ev(value=3)], [0, 1], 0.0))
    assert len(batch) == 1 and "outside the model's range 1..5" in dead[0].reason


def test_item1_readers_apply_the_same_bounds_in_every_format(tmp_path):
    udata = tmp_path / "u.data"
    udata.write_text("1\t10\t1e39\t300\n1\t11\t4\t1e300\n1\t12\t4\t-1\n1\t13\t9\t400\n2\t10\t5\t500\n")
    res = read_events(str(udata))
    assert list(res.events.user) == ["1", "2"]
    reasons = {e.line: e.reason for e in res.errors}
    assert "rating 1e+39 is outside the allowed range" in reasons[1]
    assert "timestamp 1e+300 is outside" in reasons[2] and "timestamp -1 is outside" in reasons[3]
    res = read_events(str(udata), value_range=(1.0, 5.0))
    assert "rating 9 is outside the model's range 1..5" in {e.line: e.reason for e in res.errors}[4]
    csv = tmp_path / "log.csv"
    csv.write_text("u,i,t,v\na,b,1e300,1\na,b,5,1e39\na,b,2024-01-01,2\n")
    res = read_events(str(csv), fmt="csv", columns="user=u,item=i,ts=t,value=v")
    assert len(res.events) == 1 and len(res.errors) == 2
    jl = tmp_path / "e.jsonl"
    jl.write_bytes(ev(value=1e39) + b"\n" + ev(ts=1e300) + b"\n" + ev() + b"\n")
    res = read_events(str(jl))
    assert len(res.events) == 1 and len(res.errors) == 2


@pytest.mark.parametrize("line", ["1\t10\t1e39\t300", "1\t10\t4\t1e300", "1\t10\tnan\t300", "1\t10\tinf\t300"])
def test_item1_item6_the_backtest_survives_a_hostile_udata_line(tmp_path, line):
    path = tmp_path / "u.data"
    good = [f"{u}\t{i}\t{1 + (u * i) % 5}\t{1000 + 10 * j}" for j, (u, i) in
            enumerate((u, i) for u in range(20) for i in range(10))]
    path.write_text("\n".join(good[:50] + [line] + good[50:]) + "\n")
    for model in ("mf", "pop"):
        proc = subprocess.run([sys.executable, "-m", "recsys_stream.cli", "backtest", str(path), "--model", model,
                               "--show", "0", "--quiet"], capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        res = orjson.loads(proc.stdout.strip().splitlines()[-1])
        assert res["events"] == 200 and res["invalid"] == 1
        finite = [v for k, v in res.items() if k in ("rmse", "mae", "hr@10", "mrr@10", "ndcg@10")]
        assert finite and all(math.isfinite(v) for v in finite), res


# -- the general rule, by property: any bytes are an event or a dead letter ------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(hostile.messages(), min_size=1, max_size=30))
def test_any_message_is_an_event_or_a_dead_letter_never_an_exception(msgs):
    raw = RawBatch("t", 3, [k for k, _v, _ok in msgs], [v for _k, v, _ok in msgs], list(range(len(msgs))), 0.0)
    batch, dead = EventParser(value_range=(1.0, 5.0))(raw)
    n_ok = 0 if batch is None else len(batch)
    assert n_ok + len(dead) == len(msgs)
    assert all(d.reason for d in dead)
    expected_ok = [j for j, (_k, _v, ok) in enumerate(msgs) if ok]
    got_ok = [] if batch is None else batch.offset.tolist()
    assert got_ok == expected_ok  # exactly the valid ones are events, in order
    if batch is not None:
        assert all(math.isfinite(x) and abs(x) <= MAX_ABS_VALUE for x in batch.value.tolist())
        assert all(math.isfinite(x) and float(x) == float(x) for x in batch.value.astype("float32").tolist())
        assert all(TS_MIN <= t < TS_MAX for t in batch.ts.tolist())
        assert all(len(u) <= MAX_ID_LEN for u in batch.user) and all(len(i) <= MAX_ID_LEN for i in batch.item)
    ops, bad = CatalogParser()(raw)
    assert len(ops) + len(bad) == len(msgs)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(lines=st.lists(st.one_of(hostile.udata_lines(), st.binary(max_size=200)), min_size=1, max_size=40))
def test_any_file_reads_into_events_and_dead_letters(tmp_path_factory, lines):
    d = tmp_path_factory.mktemp("f")
    raws = [ln.replace(b"\n", b" ").replace(b"\r", b" ") for ln in lines]
    for name in ("u.data", "e.jsonl", "ratings.dat"):
        path = d / name
        path.write_bytes(b"\n".join(raws) + b"\n")
        res = read_events(str(path), value_range=(1.0, 5.0))
        nonblank = sum(1 for r in raws if r.strip())
        assert len(res.events) + len(res.errors) == nonblank
        assert all(math.isfinite(x) and abs(x) <= MAX_ABS_VALUE for x in res.events.value.tolist())
        assert all(TS_MIN <= t < TS_MAX for t in res.events.ts.tolist())
        write_dead_letters(str(d / (name + ".dead")), res.errors)
        assert len((d / (name + ".dead")).read_bytes().splitlines()) == len(res.errors)


# -- item 11 (part): the dead-letter file never follows a symlink -----------------------------


def test_item11_dead_letter_writer_refuses_a_symlink(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "u.data.dead-letter.jsonl"
    link.symlink_to(victim)
    with pytest.raises(OSError, match="symbolic link"):
        write_dead_letters(str(link), [])
    assert victim.read_text() == "precious\n"
    data = tmp_path / "u.data"
    data.write_text("1\t2\t3\t4\nbroken\n")
    for cmd in (["backtest", str(data), "--show", "0"],):
        proc = subprocess.run([sys.executable, "-m", "recsys_stream.cli", *cmd], capture_output=True, text=True,
                              cwd=ROOT, timeout=300)
        assert proc.returncode == 2 and str(link) in proc.stderr and "symbolic link" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 or "Traceback" not in proc.stderr
    assert victim.read_text() == "precious\n"


# -- item 2: every id the input accepts checkpoints ---------------------------------------------


def _roundtrip(user_ids: list[str], item_ids: list[str], model: str = "itemknn"):
    import tempfile

    import numpy as np

    from recsys_stream.checkpoint import Checkpointer, digest
    from recsys_stream.events import EventBatch
    from recsys_stream.models import model_params
    from recsys_stream.shard import Shard, ShardSettings
    from recsys_stream.storage import USERS, Store

    n = max(len(user_ids), len(item_ids)) * 2
    users = [user_ids[j % len(user_ids)] for j in range(n)]
    items = [item_ids[(j * 7 + j // len(item_ids)) % len(item_ids)] for j in range(n)]
    b = EventBatch.from_columns(users, items, 1.7e9 + np.arange(n), np.zeros(n), np.full(n, 4.0), np.arange(n),
                                np.full(n, -1), np.arange(n))
    settings_ = ShardSettings(model=model, params=model_params(model), seed=3)
    with tempfile.TemporaryDirectory() as d:
        st_a = Store(d, map_size=256 << 20)
        a = Shard(0, settings_)
        a.checkpointer = Checkpointer(a, st_a)
        kept, _held = a.admit(b)
        a.process(kept)
        g = a.checkpointer.snapshot(a.filter.snapshot())
        assert st_a.verify_generation(0, g).records > 0
        d1, counts = digest(st_a, {0: g})
        assert counts == {"users": len(set(users)), "items": len(set(items))}
        assert {e.decode("utf-8") for e, _g, _p in st_a.scan(0, USERS, g)} == set(users)
        assert {e.decode("utf-8") for e, _g, _p in st_a.scan(0, USERS, g, verify=False)} == set(users)
        st_a.close()
        st_b = Store(d, map_size=256 << 20)  # another process
        bsh = Shard(0, settings_)
        bsh.checkpointer = Checkpointer(bsh, st_b)
        bsh.filter.restore(bsh.checkpointer.restore(g))
        assert sorted(x for x in bsh.items.ids.ids if x is not None) == sorted(set(items))
        for u in dict.fromkeys(users):
            ra, rb = a.recommend(u), bsh.recommend(u)
            assert rb["known"] and (rb["version"], rb["items"]) == (ra["version"], ra["items"]), u
        # and a second generation over the restored state (versions, GC and rollback of long keys)
        more, _ = bsh.admit(b)
        bsh.process(more)
        g2 = bsh.checkpointer.snapshot(bsh.filter.snapshot())
        assert st_b.verify_generation(0, g2).gen == g2
        assert st_b.rollback(0, g) > 0 and digest(st_b, {0: g})[0] == d1
        st_b.close()


def test_item2_ids_of_256_wide_characters_checkpoint():
    # 256 CJK characters (768 bytes), 256 astral ones (1,024 bytes): beyond LMDB's 511-byte keys
    users = ["中" * 256, "𠀀" * 256, "😀" * 255 + "a", "u" * 256, "x"]
    items = ["文" * 256, "𪚥" * 256, "i" * 256, "e\u0301" * 128, "j"]
    _roundtrip(users, items)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(users=st.lists(hostile.ids().map(str), min_size=1, max_size=12, unique=True),
       items=st.lists(hostile.ids().map(str), min_size=1, max_size=12, unique=True))
def test_item2_any_valid_id_round_trips_through_a_checkpoint(users, items):
    assert all(len(x) <= MAX_ID_LEN for x in users + items)
    _roundtrip(users, items)
