"""The live job's pieces without a broker: the refresh policy, parsing with lateness,
cold-start lists, Bytewax's runner on the job factory, and the metrics endpoint."""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import orjson

from conftest import make_batch
from recsys_stream.io.kafka import RawBatch
from recsys_stream.io.parse import CatalogParser, EventParser
from recsys_stream.models import model_params
from recsys_stream.refresh import RefreshPolicy
from recsys_stream.shard import Shard, ShardSettings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_refresh_policy_leading_then_trailing_edge():
    p = RefreshPolicy(interval_s=10.0)
    users = np.array(["a", "a", "a", "b"], dtype=object)
    first = np.array([True, False, False, True])
    last = np.array([False, False, True, True])
    want, leading = p.choose(users, first, last, now=100.0)
    assert want.tolist() == [True, False, True, True] and leading.tolist() == [True, False, False, True]
    recs = [{"user": "a", "version": 1}, {"user": "a", "version": 3}, {"user": "b", "version": 1}]
    sent = p.after(recs, leading[want].tolist(), now=100.0)
    assert [(r["user"], r["version"]) for r in sent] == [("a", 1), ("b", 1)]  # a's v3 waits
    assert p.next_due() == 110.0
    # inside the interval: a new event of a only replaces the pending list
    want, leading = p.choose(np.array(["a"], dtype=object), np.array([True]), np.array([True]), now=105.0)
    assert want.tolist() == [True] and leading.tolist() == [False]
    assert p.after([{"user": "a", "version": 4}], [False], now=105.0) == []
    assert p.due(109.0) == []
    assert p.due(110.0) == [{"user": "a", "version": 4}]  # the trailing edge: the latest list
    assert p.pending == {}


def test_parser_dead_letters_keep_origin_and_late_events_when_asked():
    good = [orjson.dumps({"user": "u", "item": "i", "ts": t, "type": "view", "value": 1}) for t in (100, 200, 90, 199)]
    raw = RawBatch("t", 2, [b"u"] * 5, good[:2] + [b"oops"] + good[2:], [10, 11, 12, 13, 14], 5.0)
    batch, dead = EventParser(max_lateness_s=50)(raw)
    assert batch.offset.tolist() == [10, 11, 14] and batch.part.tolist() == [2, 2, 2]
    assert [d.offset for d in dead] == [12, 13]
    assert dead[0].raw == b"oops" and dead[0].key == b"u" and dead[0].partition == 2
    assert "late" in dead[1].reason and "110.0 s behind" in dead[1].reason
    batch, dead = EventParser()(raw)  # lateness off by default
    assert len(batch) == 4 and len(dead) == 1
    ops, bad = CatalogParser()(RawBatch("items", 0, [None] * 3, [b'{"item": "x", "op": "retire"}',
                                                                 b'{"item": "y", "op": "burn"}', b"[]"], [0, 1, 2],
                                        0.0))
    assert ops == [("x", "retire")] and len(bad) == 2


def test_an_unknown_user_gets_the_popularity_list():
    sh = Shard(0, ShardSettings(model="mf", params=model_params("mf", dim=4), half_life_days=math.inf))
    # plain counts: "x" twice, then "y" and "z" once (ties go to the item seen first)
    sh.process(make_batch(["a", "b", "c", "a"], ["x", "x", "y", "z"], values=np.full(4, 4.0)))
    rec = sh.recommend("nobody")
    assert rec["known"] is False and rec["items"][:2] == ["x", "y"]
    # a user whose only event is a view has no rating model yet: popularity, own items excluded
    sh.process(make_batch(["d"], ["y"], values=np.ones(1), etypes=np.ones(1)))
    assert sh.recommend("d")["items"][0] == "x" and "y" not in sh.recommend("d")["items"]


def test_bytewax_runner_on_the_job_factory():
    env = dict(os.environ, RECSYS_GEN_EVENTS="3000", RECSYS_RATE="0", RECSYS_REFRESH_INTERVAL_S="0")
    proc = subprocess.run([sys.executable, "-m", "bytewax.run", "flows.job:get_flow()", "-w", "2"], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    recs = [orjson.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    assert recs and all({"user", "items", "version"} <= set(r) for r in recs)


def free_port() -> int:
    """A port nothing listens on now: the system's pick for port 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def test_metrics_endpoint_serves_the_counters():
    port = free_port()
    job = subprocess.Popen([sys.executable, "-m", "recsys_stream.cli", "run", "--events", "40000", "--rate", "8000",
                            "--metrics-port", str(port), "--log-format", "json"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        text = ""
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
                if "recsys_events_in_total" in text and "recsys_lists_out_total 0.0" not in text:
                    break
            except OSError:
                pass
            time.sleep(0.3)
        values = {ln.split(" ")[0]: float(ln.split(" ")[1]) for ln in text.splitlines()
                  if ln and not ln.startswith("#")}
        assert values["recsys_events_in_total"] > 0
        assert values["recsys_lists_out_total"] > 0
        assert values["recsys_update_seconds_count"] > 0
        assert values["recsys_event_to_emit_seconds_count"] > 0
    finally:
        job.terminate()
        err = job.stderr.read()
        job.wait(60)
    assert job.returncode == 0
    first = next(ln for ln in err.splitlines() if ln.startswith("{"))
    assert {"ts", "level", "logger", "msg"} <= set(orjson.loads(first))  # structured logs
