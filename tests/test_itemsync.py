"""Item updates crossing processes (issue #8): the ids an update names survive the trip
between two processes' indices (which number items differently), through Bytewax's
exchange (``Update.as_ids``) and through the sync topic's encoding; a replayed or foreign
message is applied never or once; any byte string is either a valid update or refused
with a reason (Hypothesis), never an exception of another kind."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsys_stream.io.itemsync import ItemSync, SyncFormatError, decode, encode, split
from recsys_stream.hub import Hub
from recsys_stream.items import Update
from recsys_stream.models import MODELS
from recsys_stream.state import ItemState

N_BUCKETS = 4


def make_hub(process_id: int) -> Hub:
    cls = MODELS["itemknn"]
    model = cls(cls.params_type())

    def make_state(index):
        return ItemState(model.item_specs(), 7.0, 42, model.item_pools(), index)

    return Hub(make_state, N_BUCKETS, model, processes=2, process_id=process_id, workers=1).start()


def names(index, rows) -> list:
    ids = index.ids.ids
    return [ids[int(r)] for r in rows]


@pytest.fixture
def two():
    h0, h1 = make_hub(0), make_hub(1)
    h1.index.rows(np.array(["d", "x", "c"], dtype=object))  # process 1 numbers items otherwise
    rows0, _ = h0.index.rows(np.array(["a", "b", "c", "d"], dtype=object))
    r = dict(zip("abcd", rows0.tolist()))
    adds = {"iev": np.array([1, 2], np.int64), "knn.n": np.array([1.0, 2.0])}  # an int and a float array of the model
    u = Update(2, "p0w0", 5, np.array([r["a"], r["c"]], np.int32), adds, (np.array([r["a"], r["a"], r["d"]], np.int32),
               np.array([0.1, 0.2, 0.3])),
               {"knn": (np.array([r["a"], r["b"], r["a"]], np.int32), np.array([r["b"], r["a"], r["c"]], np.int32),
                        np.array([1.0, 1.0, 2.0]))}, {}, catalog=None)
    return h0, h1, u


def check_same(h1, w: Update) -> None:
    assert not w.ids
    assert names(h1.index, w.rows) == ["a", "c"]
    assert names(h1.index, w.pop[0]) == ["a", "a", "d"]
    assert w.pop[1].tolist() == [0.1, 0.2, 0.3]
    i, j, x = w.pairs["knn"]
    assert list(zip(names(h1.index, i), names(h1.index, j), x.tolist())) == \
        [("a", "b", 1.0), ("b", "a", 1.0), ("a", "c", 2.0)]


def test_ids_survive_bytewax_exchange_and_the_topic(two):
    h0, h1, u = two
    check_same(h1, u.as_ids(h0.index).as_rows(h1.index))  # shard -> owner in another process
    proc, run, seq, v = decode(encode(u, 0, 9, h0.index.ids.ids, "run-a"), N_BUCKETS)  # owner -> sync topic
    assert (proc, run, seq, v.bucket, v.origin) == (0, "run-a", 9, 2, "p0w0")
    check_same(h1, v.as_rows(h1.index))
    # an update that crossed once can be published again (codes into its own names)
    _p, _r, _s, v2 = decode(encode(v, 0, 10, v.names, "run-a"), N_BUCKETS)
    check_same(h1, v2.as_rows(h1.index))
    # split into parts that do the same in order
    parts = [p.as_rows(h1.index) for p in split(v, 3)]
    assert sum(len(p.pop[0]) for p in parts) == 3 and sum(len(p.pairs["knn"][0]) for p in parts) == 3


def test_a_catalog_operation_names_its_item(two):
    h0, h1, _u = two
    rb = h0.index.rows(np.array(["b"], dtype=object))[0][0]
    z = np.zeros(0, np.int32)
    u = Update(1, "owner", 0, z, {}, (z, np.zeros(0)), {}, {}, catalog=[(int(rb), 0)])
    for w in (u.as_ids(h0.index).as_rows(h1.index), decode(encode(u, 0, 1, h0.index.ids.ids), N_BUCKETS)[3]
              .as_rows(h1.index)):
        assert [(names(h1.index, [r])[0], a) for r, a in w.catalog] == [("b", 0)]


def test_receive_applies_each_message_once_per_run(two):
    h0, h1, u = two
    sync = ItemSync({}, "t.item-sync", h1, 1.0, process_id=1, processes=2)
    replica = h1.all[0]
    m1 = encode(u, 0, 1, h0.index.ids.ids, "run-a")
    assert sync.receive(m1) and not sync.receive(m1)  # a producer retry's duplicate
    assert not sync.receive(encode(u, 1, 1, h0.index.ids.ids, "run-a"))  # its own process's
    assert sync.receive(encode(u, 0, 1, h0.index.ids.ids, "run-b"))  # process 0 restarted: seq 1 again
    assert not sync.receive(b"garbage") and sync.refused == 1
    # well formed, but not this model's arrays: refused before any worker applies it
    z = np.zeros(0, np.int32)
    for bad in (Update(0, "p0w0", 1, np.array([0], np.int32), {"bogus": np.ones((1, 3))}, (z, np.zeros(0)), {}, {}),
                Update(0, "p0w0", 1, z, {}, (z, np.zeros(0)), {"no-such-pool": (z, z, np.zeros(0))}, {}),
                Update(0, "p0w0", 1, z, {}, (z, np.zeros(0)), {}, {"bogus": [(10**6, np.ones(5))]})):
        assert not sync.receive(encode(bad, 0, 99, h0.index.ids.ids, "run-c"))
    assert sync.refused == 4
    assert len(replica.inbox) == 2
    replica.absorb()
    a = replica.state.index.ids.get("a")
    pool = replica.state.pools["knn"]
    js, cs = pool.row(replica.state.arrays, a)
    got = dict(zip(names(h1.index, js), np.asarray(cs).tolist()))
    assert got["b"] == 2.0 and got["c"] == 4.0  # each pair once per accepted message
    ia = replica.state.arrays
    c = replica.state.index.ids.get("c")
    assert (int(ia["iev"][a]), int(ia["iev"][c])) == (2, 4) and (ia["knn.n"][a], ia["knn.n"][c]) == (2.0, 4.0)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_bytes_are_an_update_or_refused(two, data):
    h0, h1, u = two
    good = encode(u, 0, 1, h0.index.ids.ids, "r")
    how = data.draw(st.sampled_from(["random", "flip", "cut"]))
    if how == "random":
        msg = data.draw(st.binary(max_size=400))
    elif how == "flip":
        b = bytearray(good)
        for _ in range(data.draw(st.integers(1, 4))):
            b[data.draw(st.integers(0, len(b) - 1))] ^= data.draw(st.integers(1, 255))
        msg = bytes(b)
    else:
        msg = good[: data.draw(st.integers(0, len(good) - 1))]
    sync = ItemSync({}, "t.item-sync", h1, 1.0, process_id=1, processes=2)
    if sync.receive(msg):  # accepted: the replica applies it without failing
        h1.all[0].absorb()
    try:
        _p, _r, _s, v = decode(msg, N_BUCKETS)
    except SyncFormatError as exc:
        assert str(exc)
        return
    w = v.as_rows(h1.index)  # a valid one names items that exist (or are created) here
    for arr in (w.rows, w.pop[0], *[x for i, j, _w in w.pairs.values() for x in (i, j)]):
        assert (np.asarray(arr) >= 0).all() and (np.asarray(arr) < len(h1.index)).all()
