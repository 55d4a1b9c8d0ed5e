"""Checkpoints in LMDB: exact restores, rollback, corruption, expiry, the frequency filter."""

from __future__ import annotations

import os

import lmdb
import numpy as np
import pytest

from recsys_stream.checkpoint import Checkpointer, digest
from recsys_stream.events import EventBatch
from recsys_stream.generate import GeneratorSettings, generate
from recsys_stream.models import model_params
from recsys_stream.shard import Shard, ShardSettings
from recsys_stream.storage import USERS, CheckpointError, Store, decode, split_key

from recsys_stream.models import MODELS as _REGISTRY  # noqa: E402

MODELS = list(_REGISTRY)  # every registered model


@pytest.fixture(scope="module")
def log():
    return generate(GeneratorSettings(events=6_000, users=400, items=150, seed=17))


def settings(model, **kw):
    return ShardSettings(model=model, params=model_params(model), seed=7, **kw)


def run(sh: Shard, b: EventBatch, step: int = 700) -> None:
    for a in range(0, len(b), step):
        part, _held = sh.admit(b.slice(a, a + step))
        sh.process(part)


def backed(path, model, **kw) -> tuple[Shard, Store]:
    st = Store(str(path))
    sh = Shard(0, settings(model, **kw))
    sh.checkpointer = Checkpointer(sh, st)
    return sh, st


def restored(st: Store, model, gen: int, fallback=False, **kw) -> Shard:
    sh = Shard(0, settings(model, **kw))
    sh.checkpointer = Checkpointer(sh, st, fallback=fallback)
    emit = sh.checkpointer.restore(gen)  # a fallback resets the shard: then take its filter
    sh.filter.restore(emit)
    return sh


@pytest.mark.parametrize("model", MODELS)
def test_restore_and_continue_equals_the_uninterrupted_run(tmp_path, log, model):
    half = len(log) // 2
    a, sa = backed(tmp_path / "a", model)
    run(a, log, step=1000)
    ga = a.checkpointer.snapshot(a.filter.snapshot())
    b, sb = backed(tmp_path / "b", model)
    run(b, log.slice(0, half), step=333)  # other batch boundaries
    g1 = b.checkpointer.snapshot(b.filter.snapshot())
    c = restored(sb, model, g1)  # a new process: users come back lazily
    run(c, log.slice(half, len(log)), step=500)
    gc = c.checkpointer.snapshot(c.filter.snapshot())
    da, counts = digest(sa, {0: ga})
    dc, _ = digest(sb, {0: gc})
    assert counts["users"] == len(set(log.user)) and counts["items"] == len(set(log.item))
    assert da == dc
    # the same lists too
    for user in list(dict.fromkeys(log.user))[:25]:
        assert a.recommend(user)["items"] == c.recommend(user)["items"]


def test_rollback_to_the_generation_bytewax_committed(tmp_path, log):
    sh, st = backed(tmp_path / "s", "implicit")
    gens, digests = [], []
    for part in range(3):
        run(sh, log.slice(part * 2000, (part + 1) * 2000))
        gens.append(sh.checkpointer.snapshot(sh.filter.snapshot()))
        digests.append(digest(st, {0: gens[-1]})[0])
    assert gens == [1, 2, 3] and len(set(digests)) == 3
    # the worker died after LMDB committed generation 3, before Bytewax committed its epoch
    r = restored(st, "implicit", 2)
    assert st.head(0) == 2 and st.generations(0) == [1, 2]
    assert digest(st, {0: 2})[0] == digests[1]
    # and goes on from there exactly as before
    run(r, log.slice(4000, 6000))
    assert digest(st, {0: r.checkpointer.snapshot(r.filter.snapshot())})[0] == digests[2]


def _corrupt_one_user_record(path: str, gen: int) -> bytes:
    env = lmdb.open(path, subdir=True, map_size=1 << 30)
    done = None
    with env.begin(write=True) as txn:
        for key, value in txn.cursor():
            _s, table, _e, g = split_key(key) if key[2:3] not in (b"H", b"F") else (0, b"", b"", 0)
            if table == USERS and g == gen:
                bad = bytearray(value)
                bad[len(bad) // 2] ^= 0x40  # one flipped bit in the payload
                done = (key, bytes(bad))
                break
        assert done is not None, "no user record to corrupt"
        txn.put(*done)
    env.close()
    return done[0]


def test_flipped_bytes_are_refused_or_fall_back_loudly(tmp_path, log, caplog):
    sh, st = backed(tmp_path / "s", "mf")
    run(sh, log.slice(0, 3000))
    sh.checkpointer.snapshot(sh.filter.snapshot())
    run(sh, log.slice(3000, 6000))
    g2 = sh.checkpointer.snapshot(sh.filter.snapshot())
    st.close()
    _corrupt_one_user_record(str(tmp_path / "s"), g2)
    st = Store(str(tmp_path / "s"))
    with pytest.raises(CheckpointError, match="checksum mismatch.*Refusing"):
        restored(st, "mf", g2)
    # told to, it resumes from generation 1 and says the events between are skipped
    r = restored(st, "mf", g2, fallback=True)
    assert "CHECKPOINT FALLBACK" in caplog.text and "SKIPPED" in caplog.text
    assert r.filter.applied == {-1: 2999}


def test_record_checks():
    from recsys_stream.storage import encode

    v = encode(b"payload")
    assert decode(v, "x") == b"payload"
    with pytest.raises(CheckpointError, match="truncated"):
        decode(v[:-3], "x")
    with pytest.raises(CheckpointError, match="format 9"):
        decode(b"\x00\x09" + v[2:], "x")


def test_truncated_lmdb_file_is_refused(tmp_path, log):
    sh, st = backed(tmp_path / "s", "itemknn")
    run(sh, log)
    sh.checkpointer.snapshot(sh.filter.snapshot())
    st.close()
    data = tmp_path / "s" / "data.mdb"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 3)
    with pytest.raises(CheckpointError, match="damaged or truncated|truncated"):
        st = Store(str(tmp_path / "s"))
        restored(st, "itemknn", 1)


def test_other_settings_are_refused(tmp_path, log):
    sh, st = backed(tmp_path / "s", "mf")
    run(sh, log.slice(0, 1000))
    g = sh.checkpointer.snapshot(sh.filter.snapshot())
    other = Shard(0, ShardSettings(model="mf", params=model_params("mf", dim=8), seed=7))
    other.checkpointer = Checkpointer(other, st)
    with pytest.raises(CheckpointError, match="written with params=.*this job runs"):
        other.checkpointer.restore(g)


def test_full_map_is_a_clean_error_and_keeps_the_last_generation(tmp_path, log):
    st = Store(str(tmp_path / "s"), map_size=4 << 20)
    sh = Shard(0, settings("ftrl"))  # 2**20 hashed weights: megabytes once they are all touched
    sh.checkpointer = Checkpointer(sh, st)
    run(sh, log.slice(0, 20))
    g1 = sh.checkpointer.snapshot(sh.filter.snapshot())
    run(sh, log.slice(20, 6000))
    with pytest.raises(CheckpointError, match="map is full"):
        sh.checkpointer.snapshot(sh.filter.snapshot())
    assert st.head(0) == g1 and st.verify_generation(0, g1).gen == g1


def test_expired_users_come_back_with_exactly_their_state(tmp_path):
    # two groups of users, the first idle for a minute of event time while the second plays
    t0 = 1.7e9
    first = [(f"u{j}", f"i{(j * 7 + k) % 30}", t0 + k * 0.1) for j in range(20) for k in range(6)]
    second = [(f"v{j}", f"i{(j * 3 + k) % 30}", t0 + 60 + k * 0.1) for j in range(20) for k in range(6)]
    rows = first + second
    b = EventBatch.from_columns([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                                np.zeros(len(rows)), np.full(len(rows), 4.0), np.arange(len(rows)),
                                np.full(len(rows), -1), np.arange(len(rows)))
    sh, st = backed(tmp_path / "s", "implicit", ttl_s=5)  # a TTL of five seconds
    run(sh, b.slice(0, len(first)))
    before = {u: sh.users.arrays["imp.P"][sh.users.ids.get(u)].copy() for u in (f"u{j}" for j in range(20))}
    hist = {u: sh.users.items_of(sh.users.ids.get(u)).tolist() for u in before}
    run(sh, b.slice(len(first), len(rows)))
    sh.checkpointer.snapshot(sh.filter.snapshot())
    assert sh.checkpointer.evict_idle(5) == 20
    assert sh.users.ids.live() == 20 and all(sh.users.ids.get(u) < 0 for u in before)
    # memory is reused: a new user takes a freed row
    back = EventBatch.from_columns(["u3"], ["i29"], [t0 + 70], [0], [4.0], [len(rows)], [-1], [len(rows)])
    loaded, _ = sh.admit(back)
    row = sh.users.ids.get("u3")
    assert row >= 0
    np.testing.assert_array_equal(sh.users.arrays["imp.P"][row], before["u3"])
    assert sh.users.items_of(row).tolist() == hist["u3"]
    sh.process(loaded)
    assert sh.users.arrays["uev"][row] == 7


def test_frequency_filter_admits_a_user_at_the_nth_event(tmp_path):
    users = ["a", "b", "a", "c", "a", "b", "a"]
    b = EventBatch.from_columns(users, ["x", "y", "z", "x", "y", "z", "w"], np.arange(7.0), np.zeros(7),
                                np.full(7, 4.0), np.arange(7), np.full(7, -1), np.arange(7))
    sh = Shard(0, settings("itemknn", min_user_events=3))
    kept, held = sh.admit(b)
    assert held == 5  # a: 2 held, b: 2, c: 1
    assert list(kept.user) == ["a", "a"]  # a's 3rd and 4th events
    sh.process(kept)
    assert sh.users.ids.get("b") < 0 and sh.filter.waiting == {"b": 2, "c": 1}


def test_no_snapshot_means_leftovers_are_dropped(tmp_path, log):
    from flows.recsys import ShardLogic, make_hub, open_store
    from recsys_stream.obs import NullMetrics
    from recsys_stream.settings import CheckpointSettings, FlowSettings

    path = str(tmp_path / "s")
    sh, st = backed(path, "pop")
    run(sh, log.slice(0, 500))
    sh.checkpointer.snapshot(sh.filter.snapshot())
    st.close()
    fs = FlowSettings(shard=settings("pop"), checkpoint=CheckpointSettings(path))
    logic = ShardLogic(fs, None, None, NullMetrics(), make_hub(fs), open_store(fs.checkpoint))
    batch = log.slice(500, 600)
    logic.on_batch([("events", 0, (np.zeros(len(batch), np.int32), batch))])
    assert open_store(fs.checkpoint).head(0) == 0  # the crash's generation is gone


@pytest.mark.parametrize("model,extra", [(m, {}) for m in MODELS] + [("itemknn", {"dense_items": 64}),
                                                                       ("hybrid", {"dense_items": 64})])
def test_items_encoded_in_a_batch_are_the_records_one_at_a_time(log, model, extra):
    """The batched item encoding (checkpoints of item buckets) writes exactly what the
    per-item one does, for every model, neighbour lists dense and in pools."""
    import reference

    from recsys_stream import codec

    sh = Shard(0, ShardSettings(model=model, params=model_params(model, **extra), seed=7))
    run(sh, log)
    it = sh.items
    if extra:
        assert not next(iter(it.pools.values())).is_dense
    rows = np.r_[np.arange(len(it))[::-1], [0, 0]]  # any order, repeats
    assert codec.encode_items(it, rows) == [reference.encode_item(it, int(r)) for r in rows]
    assert codec.encode_items(it, np.zeros(0, np.int64)) == []


def test_item9_expiry_frees_rows_in_a_heap_and_reuses_the_lowest_first():
    """Issue #10 item 9: TTL eviction re-sorted the free list at every removal (400k users:
    93 s). Freed rows now go to a min-heap: each removal and each reuse is O(log n), and
    new ids still take the lowest freed row first."""
    from recsys_stream.state import IdMap

    m = IdMap()
    n = 100_000
    rows, _ = m.rows(np.array([f"u{i}" for i in range(n)], dtype=object))
    assert rows.tolist() == list(range(n))
    gone = list(range(n - 1, -1, -3))  # removed from the highest down: the worst order for a sorted list
    for r in gone:
        assert m.remove(f"u{r}") == r
    f = m.free  # a min-heap, not a list re-sorted at every removal
    assert all(f[i] <= f[c] for i in range(len(f)) for c in (2 * i + 1, 2 * i + 2) if c < len(f))
    assert f[0] == min(gone) and sorted(f) == sorted(gone)
    new, _ = m.rows(np.array([f"v{i}" for i in range(len(gone) + 2)], dtype=object))
    assert new.tolist() == sorted(gone) + [n, n + 1]  # the lowest freed first, then fresh rows
    assert all(m.ids[r] == f"v{t}" for t, r in enumerate(new.tolist()))
    assert m.get("u0") == -1 and m.get("u1") == 1
