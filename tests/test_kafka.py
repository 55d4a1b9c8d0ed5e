"""Round trips through the real local broker: events in, lists and dead letters out."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict

import orjson
import pytest

import kafkautil as ku
from recsys_stream.generate import GeneratorSettings, generate
from recsys_stream.io.kafka_tools import event_messages


BAD = [
    (b"u-bad", b"{not json"),
    (b"u-bad", orjson.dumps({"user": "x", "item": "y", "ts": 1.0, "type": "view"})),  # no value
    (b"u-bad", orjson.dumps({"user": "x", "item": "y", "ts": 1.0, "type": "warp", "value": 1})),
    (b"u-bad", b'{"user":"x","item":"y","ts":1,"type":"view","value":NaN}'),
]


@pytest.fixture(scope="module")
def round_trip(kafka):
    """One job over 3 partitions of generated events plus malformed and duplicated messages."""
    events = generate(GeneratorSettings(events=4_000, users=150, items=120, seed=21))
    msgs = list(event_messages(events, "gen"))
    # a producer retry: the same event (same id) twice
    dup = msgs[100]
    msgs = msgs[:101] + [dup] + msgs[101:500] + BAD + msgs[500:]
    inp = ku.create_topic(kafka, ku.unique("in"), partitions=3)
    out, dead = ku.unique("out"), ku.unique("dead")
    ku.produce(kafka, inp, msgs)
    proc = ku.run_job("--brokers", kafka, "--input-topic", inp, "--output-topic", out, "--dead-letter-topic", dead,
                      "--partitions", "4", "--refresh-interval", "0.2", "--exit-at-end", "--k", "10", "--reasons")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lists = ku.consume_all(kafka, out, min_count=1)
    dl = ku.consume_all(kafka, dead, min_count=len(BAD))
    history = ku.histories(kafka, inp)
    assert sum(map(len, history.values())) == len(events)
    return events, lists, dl, history


def test_every_user_gets_lists_of_k_distinct_unseen_items(round_trip):
    events, lists, _dl, history = round_trip
    recs = ku.records(lists)
    users = set(events.user)
    assert {r["user"] for r in recs} == users
    # each user's items, in the input's order: the list at version v must avoid the first v
    for r in recs:
        items = r["items"]
        assert len(items) == len(set(items)) <= 10
        seen = set(history[r["user"]][: r["version"]])
        assert not seen & set(items), r
    full = [r for r in recs if r["version"] >= 5]
    assert full and all(len(r["items"]) == 10 for r in full)  # catalog is large by then
    assert {"user", "items", "scores", "model", "version", "event_ts", "trigger", "emitted_at"} <= set(recs[0])


def test_lists_through_the_broker_carry_reasons_naming_the_users_own_items(round_trip):
    """``run --reasons``: every record on the topic has a reason per item, and every
    "because" is one of the user's items up to the record's version."""
    _events, lists, _dl, history = round_trip
    because = 0
    for r in ku.records(lists):
        assert len(r["reasons"]) == len(r["items"]), r
        had = set(history[r["user"]][: r["version"]])
        for why in r["reasons"]:
            assert set(why) in ({"because", "share"}, {"source"}), why
            if "because" in why:
                assert why["because"] in had and 0.0 < why["share"] <= 1.0, (r, why)
                because += 1
    assert because > 1000


def test_versions_increase_and_the_last_list_reflects_the_last_event(round_trip):
    events, lists, _dl, _history = round_trip
    counts = defaultdict(int)
    for u in events.user:
        counts[u] += 1
    by_user = defaultdict(list)
    for p, o, key, value, _h in sorted(lists, key=lambda m: (m[0], m[1])):
        rec = orjson.loads(value)
        assert key == rec["user"].encode()
        by_user[rec["user"]].append((p, rec["version"]))
    for u, seq in by_user.items():
        parts = {p for p, _v in seq}
        assert len(parts) == 1  # keyed: one partition per user
        assert parts == {ku.java_partition(u.encode(), 4)}  # murmur2, as Java clients
        versions = [v for _p, v in seq]
        assert versions == sorted(set(versions))  # strictly increasing
        assert versions[-1] == counts[u]  # the duplicate was not applied; trailing edge sent


@pytest.fixture(scope="module")
def throttled(kafka):
    """A job whose refresh interval (an hour) outlasts it, reading polls of 20 messages from
    2 partitions: most users' events span many batches."""
    events = generate(GeneratorSettings(events=2_000, users=60, items=80, seed=23))
    inp = ku.create_topic(kafka, ku.unique("in"), partitions=2)
    out = ku.unique("out")
    ku.produce(kafka, inp, list(event_messages(events, "gen")))
    proc = ku.run_job("--brokers", kafka, "--input-topic", inp, "--output-topic", out, "--dead-letter-topic",
                      ku.unique("dead"), "--refresh-interval", "3600", "--batch-size", "20", "--exit-at-end")
    assert proc.returncode == 0, proc.stderr[-3000:]
    counts = defaultdict(int)
    for u in events.user:
        counts[u] += 1
    expected = sum(2 if c > 1 else 1 for c in counts.values())
    return counts, ku.records(ku.consume_all(kafka, out, min_count=expected))


def test_refresh_policy_bounds_lists(throttled):
    """Within one interval a user gets the list of their first event at once (the leading
    edge) and then only the list of their latest event when the interval ends or the input
    does (the trailing edge): versions [1, n] for a user with n events, however many batches
    the events came in (without the policy: one list per batch with the user's events)."""
    counts, recs = throttled
    got = defaultdict(list)
    for r in recs:
        got[r["user"]].append(r["version"])
    assert dict(got) == {u: [1, n] if n > 1 else [1] for u, n in counts.items()}


def test_malformed_messages_land_on_the_dead_letter_topic(round_trip):
    _events, lists, dl, _history = round_trip
    assert len(dl) == len(BAD)
    got = {value: dict(h) for _p, _o, _k, value, h in dl}
    for key, raw in BAD:
        headers = got[raw]
        assert headers["recsys.error.reason"]
        assert headers["recsys.error.source"].decode().startswith("in-")
        assert int(headers["recsys.error.offset"]) >= 0
    reasons = b" ".join(h["recsys.error.reason"] for h in got.values())
    assert b"not valid JSON" in reasons and b"missing field" in reasons and b"unknown event type" in reasons
    assert lists  # the good ones flowed


def test_retired_item_disappears_from_new_lists(kafka):
    inp = ku.create_topic(kafka, ku.unique("in"), partitions=1)
    items_topic = ku.create_topic(kafka, ku.unique("items"), partitions=1)
    out, dead = ku.unique("out"), ku.unique("dead")
    ev = generate(GeneratorSettings(events=3_000, users=100, items=60, seed=5))
    msgs = list(event_messages(ev, "gen"))
    ku.produce(kafka, inp, msgs[:1500])
    proc = ku.start_job("--brokers", kafka, "--input-topic", inp, "--output-topic", out, "--dead-letter-topic", dead,
                        "--items-topic", items_topic, "--refresh-interval", "0", "--model", "pop")
    try:
        first = ku.consume_all(kafka, out, min_count=50, expect_idle_s=2.0)
        # probes: new users, who have seen nothing but one item, get the popularity list of
        # everything else; one probe at a time, each answered before the next
        tail = Tail(kafka, out)
        probe_item = ev.item[0]
        probes = 0

        def probe() -> list:
            nonlocal probes
            user = f"probe-{probes}"
            event = {"user": user, "item": probe_item, "ts": float(ev.ts[1499]) + probes, "type": "view",
                     "value": 1.0, "id": f"probe:{probes}"}
            ku.produce(kafka, inp, [(user.encode(), orjson.dumps(event))])
            probes += 1
            return tail.until(lambda r: r["user"] == user, proc)["items"]

        top = probe()[0]  # the most popular item (but the probe's)
        ku.produce(kafka, items_topic, [(top.encode(), orjson.dumps({"item": top, "op": "retire"}))])
        # wait for the retirement to reach the shards (the job runs one worker: one item
        # replica): until then a probe's list still starts with it
        while True:
            assert probes < 200, "the retirement never reached the shard"
            items = probe()
            if top not in items:
                break
            assert items[0] == top
        ku.produce(kafka, inp, msgs[1500:])
        # each user's last event of a batch gets its list (--refresh-interval 0): wait for
        # the list of every user's last event
        counts = defaultdict(int)
        for u in ev.user:
            counts[u] += 1
        waiting = set(ev.user[1500:])

        def done(r) -> bool:
            if counts.get(r["user"]) == r["version"]:
                waiting.discard(r["user"])
            return not waiting

        tail.until(done, proc)
        tail.close()
    finally:
        proc.terminate()
        proc.wait(60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # lists triggered by the events after the probes (input offsets from 1500 + probes on)
    new = [r for r in tail.records if r["trigger"]["offset"] >= 1500 + probes]
    assert len(new) >= 50 and all(top not in r["items"] for r in new)
    # it was popular: before retirement it was recommended
    assert sum(top in r["items"] for r in ku.records(first)) > 10


class Tail:
    """Reads a topic from the beginning as the job writes it, keeping its place."""

    def __init__(self, boot: str, topic: str):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
        from confluent_kafka.admin import AdminClient

        parts = AdminClient({"bootstrap.servers": boot}).list_topics(topic=topic, timeout=10).topics[topic].partitions
        self.consumer = Consumer({"bootstrap.servers": boot, "group.id": ku.unique("tail"),
                                  "enable.auto.commit": False})
        self.consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        self.records: list[dict] = []

    def until(self, pred, job, max_wait_s: float = 120.0) -> dict:
        """The next record for which ``pred`` holds (read in order); fails if the job exits
        first (or, as a guard, after ``max_wait_s``)."""
        deadline = time.monotonic() + max_wait_s
        while time.monotonic() < deadline:
            m = self.consumer.poll(0.2)
            if m is None or m.error() is not None:
                assert job.poll() is None, job.stderr.read()[-2000:]
                continue
            rec = orjson.loads(m.value())
            self.records.append(rec)
            if pred(rec):
                return rec
        pytest.fail(f"no such record within {max_wait_s} s")

    def close(self) -> None:
        self.consumer.close()


def test_missing_input_topic_is_a_clear_error(kafka):
    proc = ku.run_job("--brokers", kafka, "--input-topic", ku.unique("absent"), timeout=120)
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "create it" in proc.stderr


def test_replay_and_tail_tools(kafka, tmp_path):
    path = tmp_path / "u.data"
    ev = generate(GeneratorSettings(events=500, users=40, items=30, seed=2))
    path.write_text("".join(f"{u}\t{i}\t{int(v)}\t{int(t)}\n" for u, i, v, t in zip(ev.user, ev.item, ev.value, ev.ts)))
    topic = ku.unique("replay")
    proc = subprocess.run([sys.executable, "-m", "recsys_stream.cli", "replay", str(path), "--brokers", kafka,
                           "--topic", topic, "--partitions", "2", "--rate", "5000"], capture_output=True, text=True,
                          timeout=120, cwd=ku.ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "500"
    msgs = ku.consume_all(kafka, topic, min_count=500)
    assert len(msgs) == 500
    recs = ku.records(msgs)
    assert all(m[2] == r["user"].encode() for m, r in zip(msgs, recs))  # keyed by user
    assert {r["id"] for r in recs} == {f"u.data:{n}" for n in range(1, 501)}
    proc = subprocess.run([sys.executable, "-m", "recsys_stream.cli", "tail", "--brokers", kafka, "--topic", topic,
                           "--from-beginning", "--max", "7"], capture_output=True, text=True, timeout=120,
                          cwd=ku.ROOT)
    assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 7


def test_sigterm_stops_cleanly_and_flushes(kafka):
    inp = ku.create_topic(kafka, ku.unique("in"), partitions=1)
    out, dead = ku.unique("out"), ku.unique("dead")
    ev = generate(GeneratorSettings(events=800, users=30, items=40, seed=9))
    ku.produce(kafka, inp, list(event_messages(ev, "gen")))
    proc = ku.start_job("--brokers", kafka, "--input-topic", inp, "--output-topic", out, "--dead-letter-topic", dead,
                        "--refresh-interval", "30")
    lists = ku.consume_all(kafka, out, min_count=30, expect_idle_s=2.0)
    proc.terminate()
    assert proc.wait(60) == 0, proc.stderr.read()[-2000:]
    lists = ku.consume_all(kafka, out, min_count=len(lists) + 1, expect_idle_s=1.0, max_wait_s=20)
    last = {}
    for rec in ku.records(lists):
        last[rec["user"]] = rec["version"]
    counts = defaultdict(int)
    for u in ev.user:
        counts[u] += 1
    # the 30 s interval held trailing lists back; stopping sent them
    assert last == dict(counts)
