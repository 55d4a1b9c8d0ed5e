"""Hostile messages through the real broker (issue #10): whatever the bytes on the input
topic, the job exits 0, every message read is accounted for (applied + duplicate +
replayed + filtered + invalid = consumed), the dead-letter topic holds exactly the
invalid ones with their reason, every valid event is applied (the lists' versions), and
the checkpoint of any valid id can be inspected. Many generated messages share one job
run per example, so the whole file takes a minute or two."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter, defaultdict

import orjson
import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import hostile
import kafkautil as ku

BIG = 1_030_000  # about 1.03 MB: over librdkafka's default message.max.bytes, under the broker's


def produce(boot, topic, messages):
    p = Producer({"bootstrap.servers": boot, "linger.ms": 5, "message.max.bytes": 4_000_000,
                  "partitioner": "murmur2_random", "enable.idempotence": True})
    for key, value in messages:
        p.produce(topic, key=key, value=value)
        p.poll(0)
    assert p.flush(60) == 0


def accounting(stderr: str) -> dict:
    for ln in reversed(stderr.splitlines()):
        if ln.startswith("{"):
            obj = json.loads(ln)
            if "accounting" in obj:
                return obj["accounting"]
    raise AssertionError(f"no accounting line in {stderr[-3000:]}")


def big_invalid() -> bytes:
    return orjson.dumps({"user": "x" * BIG, "item": "i", "ts": 1.7e9, "type": "view", "value": 1})


def big_valid(user: str) -> bytes:
    return orjson.dumps({"user": user, "item": "big", "ts": 1.7e9, "type": "view", "value": 1,
                         "extra": "y" * BIG})


@settings(max_examples=3, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture, HealthCheck.large_base_example])
@given(msgs=st.lists(hostile.messages(rating_range=None), min_size=150, max_size=300),
       model=st.sampled_from(["mf", "pop", "hybrid"]))
def test_every_message_is_accounted_for_through_the_broker(kafka, tmp_path_factory, msgs, model):
    msgs = list(msgs)
    msgs.insert(len(msgs) // 3, (b"big", big_invalid(), False))  # item 3: 1.03 MB, not an event
    msgs.insert(len(msgs) // 2, (None, big_valid("big-user"), True))  # 1.03 MB, a valid event
    inp = ku.create_topic(kafka, ku.unique("hostile-in"), partitions=2)
    out, dead = ku.unique("hostile-out"), ku.unique("hostile-dead")
    produce(kafka, inp, [(k, v) for k, v, _ok in msgs])
    ckpt = tmp_path_factory.mktemp("hostile") / "ckpt"
    proc = ku.run_job("--brokers", kafka, "--input-topic", inp, "--output-topic", out, "--dead-letter-topic", dead,
                      "--model", model, "--refresh-interval", "0", "--exit-at-end", "--log-format", "json",
                      "--checkpoint-dir", str(ckpt), "--checkpoint-interval", "0.5", timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    acc = accounting(proc.stderr)
    assert acc["consumed"] == len(msgs)
    assert acc["consumed"] == acc["applied"] + acc["duplicate"] + acc["replayed"] + acc["filtered"] + acc["invalid"]
    assert acc["replayed"] == 0 and acc["filtered"] == 0
    # the dead letters: exactly the invalid messages, each once, with its reason
    dl = ku.consume_all(kafka, dead, min_count=acc["invalid"], expect_idle_s=2.0) if acc["invalid"] else []
    assert len(dl) == acc["invalid"]
    expected_bad = Counter(v if v is not None else b"" for _k, v, ok in msgs if ok is False)
    got = Counter(value if value is not None else b"" for _p, _o, _k, value, _h in dl)
    assert not (expected_bad - got), "an invalid message is missing from the dead letter"
    valid_values = Counter(v for _k, v, ok in msgs if ok is True)
    assert not (got & valid_values), "a valid event went to the dead letter"
    for _p, _o, _k, value, headers in dl:
        h = dict(headers)
        assert h["recsys.error.reason"] and h["recsys.error.source"].decode() == inp
        assert int(h["recsys.error.offset"]) >= 0 and "recsys.error.truncated" not in h
    assert any(len(v or b"") >= BIG for _p, _o, _k, v, _h in dl)  # the 1.03 MB one, whole
    # every valid event applied: the newest version per user is their number of events
    n_valid = sum(1 for _k, _v, ok in msgs if ok is True)
    assert acc["applied"] + acc["duplicate"] >= n_valid
    lists = ku.records(ku.consume_all(kafka, out, min_count=1, expect_idle_s=2.0)) if acc["applied"] else []
    newest: dict = {}
    for r in lists:
        newest[r["user"]] = max(newest.get(r["user"], 0), r["version"])
        assert all(s is None or isinstance(s, float) for s in r["scores"])
    assert sum(newest.values()) == acc["applied"]
    per_user = defaultdict(int)
    with_ids = set()
    for _k, v, ok in msgs:
        if ok is True:
            obj = orjson.loads(v)
            u = hostile.normalized(obj["user"])
            per_user[u] += 1
            if obj.get("id") is not None:
                with_ids.add(u)
    for u, n in per_user.items():
        if u not in with_ids:  # no event id: no duplicate can be dropped
            assert newest.get(u) == n, (u, n, newest.get(u))
    assert newest.get("big-user") == 1
    # and the checkpoint of these ids is readable
    ins = subprocess.run([sys.executable, "-m", "recsys_stream.cli", "inspect", str(ckpt), "--digest", "--json"],
                         capture_output=True, text=True, cwd=ku.ROOT, timeout=300)
    assert ins.returncode == 0, ins.stderr
    info = orjson.loads(ins.stdout.splitlines()[0])
    assert info["digest_counts"]["users"] == len(newest)


def test_item3_a_dead_letter_larger_than_its_topic_takes_is_forwarded_truncated(kafka):
    inp = ku.create_topic(kafka, ku.unique("big-in"), partitions=1)
    out, dead = ku.unique("big-out"), ku.unique("big-dead")
    a = AdminClient({"bootstrap.servers": kafka})
    for _t, fut in a.create_topics([NewTopic(dead, 1, 1, config={"max.message.bytes": "200000"})]).items():
        fut.result(30)
    raw = orjson.dumps({"user": "u" * 500_000, "item": "i", "ts": 1.7e9, "type": "view", "value": 1})
    good = orjson.dumps({"user": "ok", "item": "i", "ts": 1.7e9, "type": "view", "value": 1})
    produce(kafka, inp, [(b"k", raw), (b"ok", good)])
    proc = ku.run_job("--brokers", kafka, "--input-topic", inp, "--output-topic", out, "--dead-letter-topic", dead,
                      "--refresh-interval", "0", "--exit-at-end", "--log-format", "json", timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc = accounting(proc.stderr)
    assert acc == {**acc, "consumed": 2, "applied": 1, "invalid": 1}
    assert "forwarded truncated" in proc.stderr
    (_p, _o, key, value, headers), = ku.consume_all(kafka, dead, min_count=1, expect_idle_s=1.0)
    h = dict(headers)
    assert key == b"k" and int(h["recsys.error.truncated"]) == len(raw)
    assert raw.startswith(value) and 100_000 < len(value) < 200_000
    assert b"at most 256" in h["recsys.error.reason"]


@pytest.mark.parametrize("field,value", [("value", 1e39), ("value", -1e39), ("ts", 1e300), ("ts", -1), ("ts", 1e20)])
def test_item1_item6_overflowing_values_and_times_are_dead_letters_of_the_job(kafka, field, value):
    inp = ku.create_topic(kafka, ku.unique("ovf-in"), partitions=1)
    out, dead = ku.unique("ovf-out"), ku.unique("ovf-dead")
    ev = {"user": "a", "item": "x", "ts": 1.7e9, "type": "rating", "value": 4}
    msgs = [(b"a", orjson.dumps({**ev, "item": f"i{j}", "ts": 1.7e9 + j})) for j in range(20)]
    msgs.insert(10, (b"a", orjson.dumps({**ev, field: value})))
    produce(kafka, inp, msgs)
    proc = ku.run_job("--brokers", kafka, "--input-topic", inp, "--output-topic", out, "--dead-letter-topic", dead,
                      "--model", "mf", "--refresh-interval", "0", "--exit-at-end", "--log-format", "json",
                      timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    acc = accounting(proc.stderr)
    assert (acc["consumed"], acc["applied"], acc["invalid"]) == (21, 20, 1)
    (_p, _o, _k, _v, headers), = ku.consume_all(kafka, dead, min_count=1, expect_idle_s=1.0)
    assert b"outside the allowed range" in dict(headers)["recsys.error.reason"]
    recs = ku.records(ku.consume_all(kafka, out, min_count=1, expect_idle_s=1.0))
    assert max(r["version"] for r in recs) == 20
    assert all(s is not None for r in recs for s in r["scores"])  # no NaN (null) scores
