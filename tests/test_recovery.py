"""Crash recovery through the real broker: kill the worker anywhere, restart it, and the
model state and the latest list per user are those of a run that never crashed."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import orjson
import pytest

import kafkautil as ku
from recsys_stream.generate import GeneratorSettings, generate
from recsys_stream.io.kafka_tools import event_messages

EVENTS = 50_000


@pytest.fixture(scope="module")
def topic(kafka):
    ev = generate(GeneratorSettings(events=EVENTS, users=3_000, items=600, seed=31))
    name = ku.create_topic(kafka, ku.unique("crash-in"), partitions=1)
    ku.produce(kafka, name, event_messages(ev, "gen"))
    return name, ev


def job_args(kafka, inp, out, ckpt, model):
    return ["--brokers", kafka, "--input-topic", inp, "--output-topic", out, "--dead-letter-topic", out + "-dead",
            "--model", model, "--checkpoint-dir", str(ckpt), "--checkpoint-interval", "0.2",
            "--refresh-interval", "0.5", "--exit-at-end", "--batch-size", "500", "--max-rate", "8000"]


def digest(ckpt) -> str:
    proc = subprocess.run([sys.executable, "-m", "recsys_stream.cli", "inspect", str(ckpt), "--digest"],
                          capture_output=True, text=True, cwd=ku.ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().splitlines()[-1]


def latest_lists(kafka, out) -> dict:
    best: dict = {}
    for rec in ku.records(ku.consume_all(kafka, out, min_count=1, expect_idle_s=2.0)):
        u = rec["user"]
        if u not in best or rec["version"] >= best[u]["version"]:
            if u in best and rec["version"] == best[u]["version"]:
                # a duplicate after a crash is the same list (same state, same version)
                assert rec["items"] == best[u]["items"], (u, rec, best[u])
            best[u] = rec
    return best


class ListCounter:
    """Counts the lists on a topic as they arrive (the job creates the topic), and the
    highest input offset that triggered one."""

    def __init__(self, kafka, topic):
        self.kafka, self.topic = kafka, topic
        self.consumer = None
        self.n = 0
        self.top = -1

    def count(self) -> int:
        if self.consumer is None:
            from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
            from confluent_kafka.admin import AdminClient

            t = AdminClient({"bootstrap.servers": self.kafka}).list_topics(topic=self.topic, timeout=5).topics
            if self.topic not in t or t[self.topic].error is not None or not t[self.topic].partitions:
                return 0
            self.consumer = Consumer({"bootstrap.servers": self.kafka, "group.id": ku.unique("count"),
                                      "enable.auto.commit": False})
            self.consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in t[self.topic].partitions])
        msgs = self.consumer.consume(1000, 0.05)  # one poll: the caller decides when to look again
        for m in msgs:
            if m.error() is None:
                self.n += 1
                self.top = max(self.top, orjson.loads(m.value())["trigger"]["offset"])
        return self.n

    def wait_for(self, n: int, job, timeout: float = 60.0) -> bool:
        """Until ``n`` lists have arrived (True), or the job exits (False); the timeout is a
        guard against a job that hangs."""
        return self._wait(lambda: self.count() >= n, job, timeout)

    def wait_for_offset(self, offset: int, job, timeout: float = 300.0) -> bool:
        """Until a list triggered at input ``offset`` or later has arrived: the job has
        applied every event up to it (the user of the last event gets a list, at once or at
        the end of the refresh interval)."""
        return self._wait(lambda: (self.count(), self.top)[1] >= offset, job, timeout)

    def _wait(self, done, job, timeout: float) -> bool:
        deadline = time.time() + timeout
        while not done():
            if job.poll() is not None or time.time() > deadline:
                return False
            time.sleep(0.05)  # the pace of the polls
        return True

    def close(self):
        if self.consumer is not None:
            self.consumer.close()


@pytest.mark.parametrize("model", ["itemknn", "hybrid"])
def test_killed_anywhere_the_state_and_lists_match_an_uninterrupted_run(kafka, topic, tmp_path, model):
    inp, ev = topic
    # run A: never interrupted
    out_a = ku.unique("out-a")
    proc = ku.run_job(*job_args(kafka, inp, out_a, tmp_path / "a", model), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # run B: the same events, handed to the job a chunk at a time, so that a job started
    # without --exit-at-end can never finish before the test kills it. Three times SIGKILL
    # at a moment set by its output (a random number of new lists), then once inside a
    # checkpoint write and once after LMDB committed (fault points), then to the end.
    msgs = list(event_messages(ev, "gen"))
    chunks = [msgs[a : a + 5_000] for a in range(0, len(msgs), 5_000)]
    in_b = ku.create_topic(kafka, ku.unique("crash-in-b"), partitions=1)  # the same offsets as A's input
    out_b = ku.unique("out-b")
    ckpt = tmp_path / "b"
    args = job_args(kafka, in_b, out_b, ckpt, model)
    args.remove("--exit-at-end")
    rnd = random.Random(1234)
    counter = ListCounter(kafka, out_b)
    produced = 0

    def feed():
        nonlocal produced
        chunk = chunks.pop(0)
        ku.produce(kafka, in_b, chunk)
        produced += len(chunk)

    kills = 0
    for _ in range(3):
        # each chunk has > 1,800 distinct users, and every user with an event gets a list
        # (leading edge, or trailing edge when the interval ends): the wait always ends
        feed()
        job = ku.start_job(*args)
        assert counter.wait_for(counter.count() + rnd.randint(100, 1_500), job, timeout=300), \
            job.stderr.read()[-2000:]
        job.send_signal(signal.SIGKILL)
        assert job.wait(60) == -signal.SIGKILL
        kills += 1
    for fault in ["checkpoint.mid-write@3", "checkpoint.after-commit@2"]:
        # a chunk at a time, each applied before the next, until the fault point kills it
        # (checkpoints are written as it works)
        job = ku.start_job(*args, env={"RECSYS_FAULT": fault})
        while job.poll() is None:
            assert chunks, f"{fault} never fired: the input ran out"
            feed()
            counter.wait_for_offset(produced - 1, job)
        assert job.wait(60) == -signal.SIGKILL, job.stderr.read()[-2000:]
        kills += 1
    counter.close()
    while chunks:
        feed()
    proc = ku.run_job(*(args + ["--exit-at-end"]), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert kills == 5
    assert digest(tmp_path / "a") == digest(ckpt)
    a, b = latest_lists(kafka, out_a), latest_lists(kafka, out_b)
    assert set(a) == set(b) == set(ev.user)
    for u in a:
        assert (a[u]["version"], a[u]["items"]) == (b[u]["version"], b[u]["items"]), u


def test_sigterm_writes_a_final_checkpoint_and_resumes(kafka, topic, tmp_path):
    inp, ev = topic
    out = ku.unique("out-t")
    args = job_args(kafka, inp, out, tmp_path / "t", "itemknn")
    args.remove("--exit-at-end")
    job = ku.start_job(*args)
    counter = ListCounter(kafka, out)
    assert counter.wait_for(200, job), job.stderr.read()[-2000:]
    counter.close()
    job.send_signal(signal.SIGTERM)
    assert job.wait(120) == 0, job.stderr.read()[-2000:]
    info = subprocess.run([sys.executable, "-m", "recsys_stream.cli", "inspect", str(tmp_path / "t"), "--json"],
                          capture_output=True, text=True, cwd=ku.ROOT, timeout=120)
    shard = orjson.loads(info.stdout.strip().splitlines()[-1])["shards"]
    s0 = next(iter(shard.values()))
    assert s0["committed_generation"] == s0["newest_generation"] > 0  # the final snapshot committed
    # a restart with the same directory goes on to the end
    proc = ku.run_job(*(args + ["--exit-at-end"]), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    latest = latest_lists(kafka, out)
    counts: dict = {}
    for u in ev.user:
        counts[u] = counts.get(u, 0) + 1
    assert {u: r["version"] for u, r in latest.items()} == counts


def test_a_second_worker_on_the_same_directory_is_refused(kafka, topic, tmp_path):
    inp, _ev = topic
    out = ku.unique("out-l")
    args = job_args(kafka, inp, out, tmp_path / "l", "pop")
    args.remove("--exit-at-end")
    first = ku.start_job(*args)
    counter = ListCounter(kafka, out)
    try:
        assert counter.wait_for(10, first)
        counter.close()
        second = ku.run_job(*args, timeout=120)
        assert second.returncode == 2 and "in use by another worker process" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(120)
