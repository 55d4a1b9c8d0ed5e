"""docker/: no Docker engine runs here, so check what can be checked without one: the
files parse, the image runs the command the tests run, the cluster is wired consistently."""

from __future__ import annotations

import os
import re

import yaml

from recsys_stream.cli import build_parser
from recsys_stream.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dockerfile() -> list[tuple[str, str]]:
    # as Docker reads it: comment lines go first (even inside a continuation), then lines join
    raw = open(os.path.join(ROOT, "docker", "Dockerfile")).read().splitlines()
    text = "\n".join(ln for ln in raw if not ln.strip().startswith("#")).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line:
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_image_runs_the_job_command_with_a_writable_numba_cache():
    instr = dockerfile()
    words = [w for w, _ in instr]
    assert words[0] == "FROM" and "ENTRYPOINT" in words and "CMD" in words
    entry = yaml.safe_load(dict(instr)["ENTRYPOINT"])
    cmd = yaml.safe_load(dict(instr)["CMD"])
    assert entry == ["recsys-stream"] and cmd == ["run"]
    # the console script is the CLI the tests drive (python -m recsys_stream.cli run ...)
    pyproject = open(os.path.join(ROOT, "pyproject.toml")).read()
    assert 'recsys-stream = "recsys_stream.cli:main"' in pyproject
    env = dict(instr)["ENV"]
    assert "NUMBA_CACHE_DIR=/var/cache/numba" in env
    runs = " ".join(r for w, r in instr if w == "RUN")
    assert "mkdir -p /var/cache/numba" in runs and "chown recsys:recsys /var/cache/numba" in runs
    # every path the image copies exists
    for w, rest in instr:
        if w == "COPY":
            for src in rest.split()[:-1]:
                assert os.path.exists(os.path.join(ROOT, src)), src


def test_compose_parses_and_the_cluster_is_consistent():
    doc = yaml.safe_load(open(os.path.join(ROOT, "docker", "compose.yaml")))
    services = doc["services"]
    workers = {n: s for n, s in services.items() if n.startswith("worker-")}
    assert len(workers) >= 2
    parser = build_parser()
    ids = []
    for name, svc in workers.items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        args = parser.parse_args(svc["command"])
        assert args.func.__name__ == "cmd_run"
        ids.append(args.process_id)
        addresses = env["RECSYS_ADDRESSES"].split(";")
        assert len(addresses) == len(workers)
        assert addresses[args.process_id].split(":")[0] == svc["hostname"] == name
        cfg = load_config(None, env=env, flags={"process_id": args.process_id})
        assert cfg.brokers == "kafka:9092"
        # the checkpoint directory is on a volume every process of the cluster mounts
        mount = svc["volumes"][0].split(":")
        assert cfg.checkpoint_dir.startswith(mount[1]) and mount[0] in doc["volumes"]
        port = int(svc["ports"][0].split(":")[1])
        assert port == cfg.metrics_port + args.process_id
    assert sorted(ids) == list(range(len(workers)))
    # the topic step creates every topic the workers use, with partitions for the cluster
    script = services["topics"]["command"][0]
    created = dict(re.findall(r"(\S+?):(\d+)", script.split("for t in", 1)[1].split(";", 1)[0]))
    env = next(iter(workers.values()))["environment"]
    for key in ("RECSYS_INPUT_TOPIC", "RECSYS_OUTPUT_TOPIC", "RECSYS_DEAD_LETTER_TOPIC", "RECSYS_ITEMS_TOPIC"):
        assert env[key] in created
    assert int(created[env["RECSYS_INPUT_TOPIC"]]) >= len(workers)
    # the tools run commands the CLI accepts
    for tool in ("replay", "tail"):
        parser.parse_args(services[tool]["command"])
