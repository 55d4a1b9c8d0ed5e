"""docker/compose.yaml started for real (scripts/compose-test.sh prepares the engine and the
images): Kafka, the topic step and the two-process Bytewax cluster with checkpoints on the
shared volume. Everything is asserted from outside, as a subscriber would see it: generated
events go into ``interactions`` through the broker's host port, lists are read from
``recommendations``, metrics are scraped from each worker's published port, one worker is
killed mid-stream and the cluster must come back by its restart policy; ``down -v`` must
leave nothing behind. Waits are on events (lists, ports, counters), never on sleeps."""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
import uuid

import orjson
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from recsys_stream.generate import GeneratorSettings, generate
from recsys_stream.io.kafka_tools import event_messages, produce_messages

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "compose-test.sh")
COMPOSE_FILE = os.path.join(ROOT, "docker", "compose.yaml")
KAFKA_HOST_PORT = 29092  # compose.yaml's default host listener
BOOT = f"127.0.0.1:{KAFKA_HOST_PORT}"
METRICS_PORTS = (9100, 9101)  # worker-0, worker-1 (RECSYS_METRICS_PORT + process id)
K = 10  # the job's default list length
TOPICS = {"interactions": 6, "items": 1, "recommendations": 6, "interactions-dead-letter": 1}
WAIT_S = 300.0  # generous: 2 cores, a JVM, two workers and a restart


def log(msg: str) -> None:
    print(f"[compose {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def wait_for(what: str, cond, timeout: float = WAIT_S, every: float = 0.5):
    t0 = time.monotonic()
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Stack:
    def __init__(self, project: str, env: dict):
        self.project = project
        self.env = env

    def compose(self, *args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = ["docker", "compose", "-f", COMPOSE_FILE, "-p", self.project, *args]
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stdout}\n{p.stderr}")
        return p

    def container(self, service: str) -> str:
        return f"{self.project}-{service}-1"

    def inspect(self, service: str, fmt: str) -> str:
        p = subprocess.run(["docker", "inspect", "-f", fmt, self.container(service)], capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else ""

    def running(self, service: str) -> bool:
        return self.inspect(service, "{{.State.Running}}") == "true"

    def restarts(self, service: str) -> int:
        return int(self.inspect(service, "{{.RestartCount}}") or 0)

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "60", check=False).stdout

    def leftovers(self) -> dict:
        label = f"label=com.docker.compose.project={self.project}"
        out = {}
        for kind, cmd in (("containers", ["docker", "ps", "-a", "-q", "--filter", label]),
                          ("volumes", ["docker", "volume", "ls", "-q", "--filter", label]),
                          ("networks", ["docker", "network", "ls", "-q", "--filter", label])):
            out[kind] = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
        return out


@pytest.fixture(scope="module")
def stack():
    """The engine, compose and the images (scripts/compose-test.sh prepare), a fresh compose
    project; afterwards the project is removed and the engine stopped if it was started here."""
    prepared = os.environ.get("RECSYS_COMPOSE_PREPARED") == "1"  # compose-test.sh runs us and cleans up
    settings = {"KAFKA_IMAGE": "recsys-local/kafka:4.1.1", "BASE_IMAGE": "recsys-local/python:3.11",
                "COMPOSE_PROJECT": "recsys-compose-test"}
    try:
        if not prepared:
            log("scripts/compose-test.sh prepare (engine, compose, images) ...")
            t0 = time.monotonic()
            p = subprocess.run(["bash", SCRIPT, "prepare"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, timeout=3600)
            if p.returncode != 0:
                raise AssertionError(f"compose-test.sh prepare exited {p.returncode}:\n{p.stderr[-6000:]}")
            for line in p.stdout.splitlines():
                if "=" in line:
                    k, _, v = line.partition("=")
                    settings[k.strip()] = v.strip()
            log(f"prepared in {time.monotonic() - t0:.0f} s (engine {settings.get('ENGINE')})")
        env = dict(os.environ, KAFKA_IMAGE=settings["KAFKA_IMAGE"], BASE_IMAGE=settings["BASE_IMAGE"])
        s = Stack(settings["COMPOSE_PROJECT"], env)
        s.compose("down", "-v", "--remove-orphans", check=False)  # a previous run's leftovers
        for port in (KAFKA_HOST_PORT, *METRICS_PORTS):
            with socket.socket() as sock:
                assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} is in use; the stack publishes it"
        yield s
        log(f"logs at the end:\n{s.logs()}")
    finally:
        if "s" in locals():
            s.compose("down", "-v", "--remove-orphans", "-t", "20", check=False)
        if not prepared:
            subprocess.run(["bash", SCRIPT, "stop"], timeout=600)


# -- subscriber side ----------------------------------------------------------------


class Lists:
    """Every list of ``recommendations`` from the beginning, read incrementally."""

    def __init__(self):
        self.c = Consumer({"bootstrap.servers": BOOT, "group.id": f"compose-test-{uuid.uuid4().hex[:8]}",
                           "enable.auto.commit": False})
        self.c.assign([TopicPartition("recommendations", p, OFFSET_BEGINNING)
                       for p in range(TOPICS["recommendations"])])
        self.records: list[dict] = []  # in arrival order; per user this is partition order

    def poll(self, seconds: float = 1.0) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for m in self.c.consume(1000, 0.2):
                if m.error() is None:
                    rec = orjson.loads(m.value())
                    rec["_key"] = m.key()
                    self.records.append(rec)

    def last_versions(self) -> dict:
        return {r["user"]: r["version"] for r in self.records}

    def close(self) -> None:
        self.c.close()


def metrics(port: int) -> dict | None:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3).read().decode()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        if line.startswith("recsys_") and " " in line and "{" not in line:
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def topics_ready() -> bool:
    try:
        md = AdminClient({"bootstrap.servers": BOOT, "log_level": 0}).list_topics(timeout=5)
    except Exception:  # noqa: BLE001 - the broker is still starting
        return False
    return all(t in md.topics and len(md.topics[t].partitions) == n for t, n in TOPICS.items())


def topic_policy(topic: str) -> str:
    from confluent_kafka.admin import ConfigResource

    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    admin = AdminClient({"bootstrap.servers": BOOT, "log_level": 0})  # held until the answer came
    return admin.describe_configs([res])[res].result(30)["cleanup.policy"].value


def counts_prefix(batch, n: int) -> collections.Counter:
    return collections.Counter(batch.user[:n])


def check_lists(records: list[dict], history: dict[str, list[str]], warm_ts: float) -> dict:
    """k distinct items (fewer only while the stream is young: a shard lists only items it has
    seen), none the user had at the triggering event. Returns how many lists were produced again
    (a version the user already got: after a restart, at least once) and how many of those differ
    (a replay can interleave the input partitions otherwise, and the list follows)."""
    first: dict[tuple, list] = {}
    again = differ = 0
    for r in records:
        user, v, items = r["user"], r["version"], r["items"]
        assert r["_key"] == user.encode(), r
        assert 1 <= v <= len(history[user]), r
        assert len(set(items)) == len(items) == (K if r["event_ts"] >= warm_ts else min(len(items), K)), r
        had = set(history[user][:v])
        assert not had & set(items), (user, v, sorted(had & set(items)))
        if (user, v) in first:
            again += 1
            differ += first[(user, v)] != items
        first.setdefault((user, v), items)
    return {"lists": len(records), "again": again, "again_differ": differ}


def accepted(records: list[dict]) -> dict[str, list[int]]:
    """What a subscriber keeps: per user, each list newer than the newest it has (by version)."""
    out: dict[str, list[int]] = collections.defaultdict(list)
    for r in records:
        vs = out[r["user"]]
        if not vs or r["version"] > vs[-1]:
            vs.append(r["version"])
    return out


def test_the_file_users_run_defaults_to_the_official_images(stack):
    """What `docker compose` v2 makes of the file without any override: the official images."""
    env = {k: v for k, v in stack.env.items() if k not in ("KAFKA_IMAGE", "BASE_IMAGE", "RECSYS_IMAGE")}
    p = subprocess.run(["docker", "compose", "-f", COMPOSE_FILE, "config", "--format", "json"], env=env,
                       capture_output=True, text=True, check=True)
    doc = orjson.loads(p.stdout)
    services = doc["services"]
    assert doc["name"] == "recsys-stream"
    assert services["kafka"]["image"] == services["topics"]["image"] == "apache/kafka:4.1.1"
    for w in ("worker-0", "worker-1"):
        assert services[w]["image"] == "recsys-stream:latest"
        assert services[w]["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim"
        assert services[w]["restart"] == "on-failure"
    assert "checkpoint" in doc["volumes"]


def test_compose_stack_serves_lists_survives_a_killed_worker_and_leaves_nothing(stack):
    t_start = time.monotonic()
    gs = GeneratorSettings(events=8000, users=150, items=300, seed=11)
    batch = generate(gs)
    n = len(batch)
    history: dict[str, list[str]] = collections.defaultdict(list)
    for e in range(n):
        history[batch.user[e]].append(batch.item[e])
    messages = list(event_messages(batch, "compose-test"))
    first = n * 2 // 5  # phase 1; the rest is produced while a worker is killed
    # after a tenth of the stream every shard has seen far more than k items: full lists
    warm_ts = float(batch.ts[n // 10])

    log("up -d")
    stack.compose("up", "-d", "--no-build", "--pull", "never")
    wait_for("the topic step's topics", topics_ready)
    assert topic_policy("recommendations") == "compact"  # the latest list per user stays readable (lists)
    assert topic_policy("interactions") == "delete"
    for port in METRICS_PORTS:
        wait_for(f"metrics on :{port}", lambda port=port: metrics(port) is not None)
    lists = Lists()
    try:
        # -- phase 1: every user gets lists; the counters move on both processes --------------
        produce_messages({"bootstrap.servers": BOOT}, "interactions", iter(messages[:first]), first)
        want1 = counts_prefix(batch, first)

        def phase1_done():
            lists.poll()
            last = lists.last_versions()
            return all(last.get(u) == c for u, c in want1.items())

        wait_for("every user's list at their phase-1 event count", phase1_done)
        before_kill = len(lists.records)
        m = {port: metrics(port) for port in METRICS_PORTS}
        log(f"phase 1: {before_kill} lists for {len(want1)} users; metrics {m}")
        assert sum(x["recsys_events_in_total"] for x in m.values()) >= first
        for port, x in m.items():
            # each process of the cluster reads its share of the 6 partitions and emits lists
            assert x["recsys_events_in_total"] > 0 and x["recsys_lists_out_total"] > 0, (port, x)
            assert x["recsys_events_invalid_total"] == 0, (port, x)
        assert check_lists(lists.records, history, warm_ts)["again"] == 0
        per_user = collections.defaultdict(list)
        for r in lists.records:
            per_user[r["user"]].append(r["version"])
        for user, vs in per_user.items():  # no restart yet: strictly increasing
            assert all(b > a for a, b in zip(vs, vs[1:])), (user, vs)

        # -- phase 2: a worker process dies mid-stream (SIGKILL, as the OOM killer would): the
        # restart policy restarts it, and its peer, which exits when the cluster breaks --------
        def crash_worker_1():
            pid = int(stack.inspect("worker-1", "{{.State.Pid}}"))
            log(f"SIGKILL to worker-1's process (pid {pid})")
            os.kill(pid, signal.SIGKILL)
            wait_for("worker-1 restarted by its restart policy",
                     lambda: stack.restarts("worker-1") > restarts0["worker-1"] and stack.running("worker-1"))

        # -- phase 3: `docker kill worker-0`: Docker counts that as a manual stop and restarts
        # it no more; its peer exits and is restarted by the policy; `docker compose start`
        # brings worker-0 back, and the cluster with it -------------------------------------
        def docker_kill_worker_0():
            log("docker kill worker-0")
            subprocess.run(["docker", "kill", stack.container("worker-0")], check=True, capture_output=True)
            wait_for("worker-1 restarted by its restart policy after its peer died",
                     lambda: stack.restarts("worker-1") > restarts0["worker-1"] and stack.running("worker-1"))
            stack.compose("start", "worker-0")

        second = n * 4 // 5
        for phase, (lo, hi, kill) in enumerate(((first, second, crash_worker_1), (second, n, docker_kill_worker_0)), 2):
            restarts0 = {w: stack.restarts(w) for w in ("worker-0", "worker-1")}
            part = messages[lo:hi]
            sent = [0]
            producer = threading.Thread(target=produce_messages, daemon=True,
                                        args=({"bootstrap.servers": BOOT}, "interactions", iter(part), len(part)),
                                        kwargs={"rate": 1000.0, "on_send": lambda i, _t: sent.__setitem__(0, i + 1)})
            producer.start()
            wait_for(f"a third of phase {phase} produced", lambda: sent[0] >= len(part) // 3, every=0.05)
            log(f"phase {phase}: {sent[0]} of {len(part)} events produced")
            kill()
            producer.join(WAIT_S)
            assert not producer.is_alive() and sent[0] == len(part)
            for port in METRICS_PORTS:
                wait_for(f"metrics on :{port} after the restart", lambda port=port: metrics(port) is not None)
            want = counts_prefix(batch, hi)

            def done():
                lists.poll()
                last = lists.last_versions()
                return all(last.get(u) == c for u, c in want.items())

            wait_for(f"every user's last list at their event count after phase {phase}", done)
            restarts = {w: stack.restarts(w) - restarts0[w] for w in ("worker-0", "worker-1")}
            log(f"phase {phase}: {len(lists.records)} lists; restarts by the policy {restarts}")
            assert stack.running("worker-0") and stack.running("worker-1")
            m = {port: metrics(port) for port in METRICS_PORTS}
            for port, x in m.items():
                assert x["recsys_events_in_total"] > 0 and x["recsys_events_invalid_total"] == 0, (port, x)

        lists.poll(3.0)  # whatever else is on its way
        stats = check_lists(lists.records, history, warm_ts)
        log(f"lists: {stats}")
        # the last list of every user (in its partition's order) is at their event count, and
        # so is the newest a subscriber keeps (it drops a list not newer than the one it has)
        want = collections.Counter(batch.user)
        last = lists.last_versions()
        assert {u: last[u] for u in want} == dict(want)
        kept = accepted(lists.records)
        assert {u: kept[u][-1] for u in want} == dict(want)
    finally:
        lists.close()

    # -- down -v: nothing of the project remains ------------------------------------------
    stack.compose("down", "-v", "-t", "20")
    assert stack.leftovers() == {"containers": [], "volumes": [], "networks": []}
    log(f"the compose test took {time.monotonic() - t_start:.0f} s after prepare")
