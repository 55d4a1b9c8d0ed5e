"""Latest lists for lookups: the job's output topic is compacted, and ``recsys-stream lists``
reads a user's latest list from the user's partition (through the real local broker)."""

from __future__ import annotations

import subprocess
import sys
from collections import defaultdict

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

import kafkautil as ku
from recsys_stream.generate import GeneratorSettings, generate
from recsys_stream.io.kafka_tools import event_messages


def lists_cmd(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "recsys_stream.cli", "lists", *args], capture_output=True, text=True,
                          timeout=120, cwd=ku.ROOT)


def read_to_end(boot: str, topic: str) -> list[tuple[int, int, bytes, dict]]:
    """Every record of ``topic`` (written by a job that has exited), each partition read up
    to its end offset: (partition, offset, key, record)."""
    parts = AdminClient({"bootstrap.servers": boot}).list_topics(topic=topic, timeout=10).topics[topic].partitions
    c = Consumer({"bootstrap.servers": boot, "group.id": ku.unique("read"), "enable.auto.commit": False})
    out = []
    try:
        for p in sorted(parts):
            low, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            if high <= low:
                continue
            c.assign([TopicPartition(topic, p, low)])
            while True:
                m = c.poll(10)
                assert m is not None, f"partition {p} of {topic}: no message before its end offset {high}"
                if m.error() is not None:
                    continue
                out.append((m.partition(), m.offset(), m.key(), orjson.loads(m.value())))
                if m.offset() >= high - 1:
                    break
    finally:
        c.close()
    return out


def cleanup_policy(boot: str, topic: str) -> str:
    a = AdminClient({"bootstrap.servers": boot})
    fut = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    return next(iter(fut.values())).result(30)["cleanup.policy"].value


@pytest.fixture(scope="module")
def job(kafka):
    """A short job over 2 input partitions, lists to 3 partitions, one list per user per
    batch (--refresh-interval 0): most users have several lists on the topic."""
    events = generate(GeneratorSettings(events=1_500, users=40, items=400, seed=31))
    inp = ku.create_topic(kafka, ku.unique("in"), partitions=2)
    out, dead = ku.unique("out"), ku.unique("dead")
    ku.produce(kafka, inp, list(event_messages(events, "gen")))
    proc = ku.run_job("--brokers", kafka, "--input-topic", inp, "--output-topic", out, "--dead-letter-topic", dead,
                      "--partitions", "3", "--refresh-interval", "0", "--batch-size", "100", "--exit-at-end",
                      "--k", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return events, out, dead, read_to_end(kafka, out), proc.stderr


def test_lists_prints_each_users_latest_list(kafka, job):
    events, out, _dead, msgs, _log = job
    by_user = defaultdict(list)
    part = {}
    for p, _o, key, rec in msgs:  # in offset order within each partition
        by_user[rec["user"]].append(rec)
        part[rec["user"]] = p
    assert set(by_user) == set(events.user)
    last = {u: recs[-1] for u, recs in by_user.items()}
    assert all(last[u]["version"] == max(r["version"] for r in recs) for u, recs in by_user.items())
    # users from every partition, the most-listed ones first (several records for one key)
    users = sorted(by_user, key=lambda u: (-len(by_user[u]), u))[:4]
    users += [u for u in sorted(by_user) if part[u] not in {part[v] for v in users}][:2]
    assert len({part[u] for u in users}) == 3 and len(by_user[users[0]]) > 3
    args = ["--brokers", kafka, "--topic", out]
    for u in users:
        args += ["--user", u]
    proc = lists_cmd(*args, "--json")
    assert proc.returncode == 0, proc.stderr
    got = [orjson.loads(line) for line in proc.stdout.splitlines()]
    assert got == [last[u] for u in users]  # whole records, in the order asked
    proc = lists_cmd(*args)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(users)
    for u, line in zip(users, lines):
        assert line.startswith(f"user {u} (version {last[u]['version']}, model itemknn, partition {part[u]} ")
        shown = line.split("): ", 1)[1]
        assert last[u]["items"] and [x.split(" (")[0] for x in shown.split(", ")] == last[u]["items"]


def test_output_topic_is_created_compacted(kafka, job):
    _events, out, dead, _msgs, log = job
    assert cleanup_policy(kafka, out) == "compact"
    assert cleanup_policy(kafka, dead) == "delete"  # dead letters are not keyed by what they replace
    assert f"output topic {out} created with cleanup.policy=compact" in log


def test_opting_out_and_an_existing_topic_left_as_it_is(kafka):
    inp = ku.create_topic(kafka, ku.unique("in"), partitions=1)  # empty: the job ends at once
    out = ku.unique("out")
    proc = ku.run_job("--brokers", kafka, "--input-topic", inp, "--output-topic", out, "--dead-letter-topic",
                      ku.unique("dead"), "--no-output-compacted", "--exit-at-end")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cleanup_policy(kafka, out) == "delete"
    existing = ku.create_topic(kafka, ku.unique("out"), partitions=2)  # delete retention
    proc = ku.run_job("--brokers", kafka, "--input-topic", inp, "--output-topic", existing, "--dead-letter-topic",
                      ku.unique("dead"), "--exit-at-end")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert cleanup_policy(kafka, existing) == "delete"
    assert f"output topic {existing} exists: left as it is, cleanup.policy=delete" in proc.stderr


def test_the_highest_version_wins_over_the_latest_offset(kafka):
    """An uncompacted tail may hold a user's lists out of version order (a restarted job
    sends lists again): the highest version is the latest list."""
    topic = ku.create_topic(kafka, ku.unique("lists"), partitions=3)

    def rec(user, version):
        return user.encode(), orjson.dumps({"user": user, "items": [f"i{version}"], "scores": [1.0], "model": "pop",
                                            "version": version})

    ku.produce(kafka, topic, [rec("hv", 3), rec("hv", 7), rec("other", 9), rec("hv", 5), rec("late", 1)])
    proc = lists_cmd("--brokers", kafka, "--topic", topic, "--user", "hv", "--user", "other", "--json")
    assert proc.returncode == 0, proc.stderr
    assert [(r["user"], r["version"]) for r in map(orjson.loads, proc.stdout.splitlines())] == [("hv", 7),
                                                                                               ("other", 9)]


def test_unknown_user_missing_topic_and_unreachable_brokers_exit_2(kafka, job):
    _events, out, _dead, _msgs, _log = job
    proc = lists_cmd("--brokers", kafka, "--topic", out, "--user", "nobody-at-all")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "'nobody-at-all'" in proc.stderr
    absent = ku.unique("absent")
    proc = lists_cmd("--brokers", kafka, "--topic", absent, "--user", "u1")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and f"topic '{absent}' does not exist" in proc.stderr
    proc = lists_cmd("--brokers", "127.0.0.1:1", "--topic", out, "--user", "u1", "--timeout", "2")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot reach the brokers" in proc.stderr
