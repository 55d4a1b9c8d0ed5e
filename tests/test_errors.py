"""User errors (issue #10 item 11, and items 4, 5, 8, 10): a mistake in a flag, a file or a
topic exits 2 with one line naming it and what was expected; the checkpoint directory is
a trust boundary; settings never destroy a checkpoint; JSON logs stay JSON."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import socket
import subprocess
import sys

import orjson
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BOOT = os.environ.get("RECSYS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
DEAD_BROKER = "127.0.0.1:1"


def cli(*args, env=None, timeout=300, prefix=()):
    return subprocess.run([*prefix, sys.executable, "-m", "recsys_stream.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout, env=dict(os.environ, **(env or {})))


def one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "panicked" not in proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("err")
    (d / "u.data").write_text("1\t2\t3\t4\n2\t3\t4\t5\nbroken\n")
    (d / "existing").write_text("x")
    (d / "u2.data").write_text("1\t2\t3\t4\nbroken\n")
    os.mkdir(d / "u2.data.dead-letter.jsonl")  # the dead letter's path is taken by a folder: unwritable
    return d


# argv -> what the one line must say (the flag, the file or the topic, and what was expected)
CASES = [
    (["backtest", "--model", "mf", "--dim", "0"], ["'dim' must be > 0"]),
    (["backtest", "--workers", "0"], ["--workers", "must be >= 1"]),
    (["backtest", "--passes", "0"], ["--passes", "must be >= 1"]),
    (["backtest", "--batch-size", "-1"], ["--batch-size", "must be >= 0"]),
    (["run", "--batch-size", "0"], ["--batch-size", "must be >= 1"]),
    (["backtest", "--gen-events", "0"], ["--gen-events", "must be >= 1"]),
    (["backtest", "--model", "mf", "--lr", "nan"], ["'lr' must be finite"]),
    (["backtest", "--model", "mf", "--lr", "-0.1"], ["'lr' must be > 0"]),
    (["backtest", "--model", "implicit", "--negatives", "-1"], ["'negatives' must be >= 0"]),
    (["backtest", "--model", "itemknn", "--window", "0"], ["'window' must be > 0"]),
    (["backtest", "--shards", "-1"], ["--shards", ">= 0"]),
    (["backtest", "--k", "100000"], ["--k", "at most 1000"]),
    (["backtest", "{d}/u.data", "--format", "csv", "--columns", "user=a,item=b", "--delimiter", ""],
     ["--delimiter", "one character"]),
    (["backtest", "{d}/u.data", "--out", "{d}/existing"], ["{d}/existing", "not a folder"]),
    (["backtest", "{d}/u.data", "--lists", "{d}/missing/l.jsonl"], ["{d}/missing", "does not exist"]),
    (["backtest", "{d}/u2.data", "--show", "0", "--quiet"], ["{d}/u2.data.dead-letter.jsonl", "dead letter"]),
    (["backtest", "{d}/nothing.data", "--quiet"], ["{d}/nothing.data", "no such file"]),
    (["run", "--model", "mf", "--dim", "0"], ["'dim' must be > 0"]),
    (["run", "--workers", "0"], ["--workers", "must be >= 1"]),
    (["run", "--rate", "-5"], ["--rate", ">= 0"]),
    (["run", "--shards", "-2"], ["--shards", ">= 0"]),
    (["run", "--k", "100000"], ["--k", "at most 1000"]),
    (["run", "--metrics-port", "99999"], ["--metrics-port", "at most 65535"]),
    (["run", "--process-id", "1"], ["--process-id", "--addresses"]),
    (["run", "--process-id", "2", "--addresses", "a:1;b:2"], ["--process-id", "not one of the 2 processes"]),
    (["run", "--addresses", "a:1;b:2"], ["--addresses", "--process-id"]),
    (["run", "--brokers", BOOT, "--dead-letter-topic", "interactions"], ["--dead-letter-topic", "loop"]),
    (["run", "--brokers", BOOT, "--output-topic", "interactions"], ["--output-topic", "input topic"]),
    (["run", "--refresh-interval", "nan"], ["--refresh-interval", "finite"]),
    (["run", "--checkpoint-interval", "0"], ["--checkpoint-interval", "> 0"]),
    (["run", "--ttl", "5"], ["--ttl", "checkpoint"]),
    (["run", "--brokers", BOOT, "--kafka", "bogus.key=1"], ["bogus.key", "No such configuration property"]),
    (["run", "--brokers", BOOT, "--kafka", "linger.ms=soon"], ["Invalid value", "--kafka"]),
    (["run", "--brokers", BOOT, "--input-topic", "absent-topic-for-errors"], ["absent-topic-for-errors",
                                                                              "does not exist"]),
    (["run", "--brokers", DEAD_BROKER], [DEAD_BROKER, "cannot reach"]),
    (["tail", "--brokers", BOOT, "--topic", "absent-topic-for-errors"], ["absent-topic-for-errors", "does not exist",
                                                                         "--topic"]),
    (["tail", "--brokers", DEAD_BROKER, "--topic", "x"], [DEAD_BROKER, "cannot reach"]),
    (["tail", "--brokers", BOOT, "--max", "-1"], ["--max", ">= 0"]),
    (["replay", "{d}/u.data", "--brokers", BOOT, "--topic", "absent-topic-for-errors"],
     ["absent-topic-for-errors", "does not exist", "--partitions"]),
    (["replay", "{d}/u.data", "--brokers", DEAD_BROKER, "--topic", "x"], [DEAD_BROKER, "cannot reach"]),
    (["replay", "{d}/u.data", "--brokers", BOOT, "--topic", "x", "--kafka", "bogus.key=1"], ["bogus.key"]),
    (["replay", "{d}/u.data", "--brokers", BOOT, "--topic", "x", "--rate", "-5"], ["--rate", ">= 0"]),
    (["inspect", "{d}/no-such-dir"], ["{d}/no-such-dir", "no such directory"]),
    (["inspect", "{d}"], ["{d}", "checkpoint.json missing"]),
    (["generate", "{d}/missing/out.jsonl"], ["{d}/missing/out.jsonl", "cannot write"]),
    (["run", "--config", "{d}/nope.toml"], ["--config", "no such file"]),
]


@pytest.fixture(scope="module")
def results(files, kafka):
    """Every case at once (the broker ones wait on timeouts): argv -> CompletedProcess."""
    d = str(files)
    argvs = [tuple(a.replace("{d}", d) for a in argv) for argv, _ in CASES]
    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        procs = list(ex.map(lambda a: cli(*a, timeout=120), argvs))
    return dict(zip(argvs, procs))


@pytest.mark.parametrize("argv,needles", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_item11_a_user_error_is_one_line_naming_it(results, files, argv, needles):
    d = str(files)
    proc = results[tuple(a.replace("{d}", d) for a in argv)]
    one_line_error(proc, *(n.replace("{d}", d) for n in needles))


def test_item11_metrics_port_in_use_is_one_line():
    s = socket.socket()
    s.bind(("0.0.0.0", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        one_line_error(cli("run", "--events", "100", "--metrics-port", str(port)), "--metrics-port", str(port))
    finally:
        s.close()


def test_item11_rate_default_agrees_in_help_and_readme():
    from recsys_stream.config import RunConfig

    assert RunConfig().rate == 4000.0
    proc = cli("run", "--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "events per second (0: as fast as it goes) (default 4000.0)" in text
    readme = open(os.path.join(ROOT, "README.md")).read()
    assert "4,000 events/s" in readme and "200 events/s" not in readme


# -- the checkpoint directory (items 5 and 8, 11) ---------------------------------------------


def embedded(ckpt, *extra, events=3000):
    return cli("run", "--events", str(events), "--rate", "0", "--refresh-interval", "0", "--checkpoint-dir", str(ckpt),
               "--checkpoint-interval", "0.2", *extra)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """A checkpoint directory made by the job (mf, dim 16)."""
    ckpt = tmp_path_factory.mktemp("made") / "ckpt"
    proc = embedded(ckpt, "--model", "mf", "--param", "dim=16")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ckpt


def copy(made, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(made, dst, symlinks=True)
    return dst


def inspect_json(ckpt):
    proc = cli("inspect", str(ckpt), "--json", "--digest")
    assert proc.returncode == 0, proc.stderr
    return orjson.loads(proc.stdout.strip().splitlines()[0])


def test_item8_the_directory_is_created_owner_only(made):
    assert os.stat(made).st_mode & 0o777 == 0o700
    for p in [made / "checkpoint.json", *(made / "recovery").iterdir()]:
        assert os.stat(p).st_mode & 0o077 == 0, p


@pytest.mark.parametrize("what", ["dir", "recovery", "partition", "meta"])
def test_item8_writable_by_others_is_refused(made, tmp_path, what):
    ckpt = copy(made, tmp_path)
    target = {"dir": ckpt, "recovery": ckpt / "recovery", "partition": ckpt / "recovery" / "part-0.sqlite3",
              "meta": ckpt / "checkpoint.json"}[what]
    os.chmod(target, os.stat(target).st_mode | 0o022)
    one_line_error(embedded(ckpt, "--model", "mf", "--param", "dim=16"), str(target), "writable by",
                   "run code in the worker", "chmod -R go-w")


def test_item8_owned_by_another_user_is_refused(made, tmp_path):
    ckpt = copy(made, tmp_path)
    if os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    os.chown(ckpt / "recovery" / "part-1.sqlite3", 65534, 65534)
    one_line_error(embedded(ckpt, "--model", "mf", "--param", "dim=16"), "part-1.sqlite3", "is owned by",
                   "run code in the worker")


def test_item8_a_symlinked_file_is_refused(made, tmp_path):
    ckpt = copy(made, tmp_path)
    elsewhere = tmp_path / "elsewhere.json"
    (ckpt / "checkpoint.json").rename(elsewhere)
    (ckpt / "checkpoint.json").symlink_to(elsewhere)
    one_line_error(embedded(ckpt, "--model", "mf", "--param", "dim=16"), "checkpoint.json", "symbolic link")


def _read_only(path):
    """A command prefix that runs with ``path`` mounted read-only (a private mount namespace)."""
    if os.geteuid() == 0 and shutil.which("unshare"):
        probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {path} {path}"],
                               capture_output=True)
        if probe.returncode == 0:
            return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro {path} {path} && exec "$@"', "sh"]
    if os.geteuid() != 0:
        for root, dirs, fs in os.walk(path):
            for n in dirs + fs:
                os.chmod(os.path.join(root, n), 0o500 if n in dirs else 0o400)
        os.chmod(path, 0o500)
        return []
    pytest.skip("no way to make a read-only directory here (root without mount namespaces)")


def test_item11_a_read_only_checkpoint_directory(made, tmp_path):
    ckpt = copy(made, tmp_path)
    expected = inspect_json(ckpt)
    prefix = _read_only(ckpt)
    one_line_error(cli("run", "--events", "3000", "--rate", "0", "--checkpoint-dir", str(ckpt), "--model", "mf",
                       "--param", "dim=16", prefix=prefix), str(ckpt), "not writable")
    proc = cli("inspect", str(ckpt), "--json", "--digest", prefix=prefix)  # inspect reads a read-only copy
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout.strip().splitlines()[0])["digest"] == expected["digest"]


@pytest.mark.parametrize("content", [b"", b'{"format": 3, "n_sh', b"\x00\xff garbage", b"[]", b'{"format": 3}'])
def test_item11_a_corrupt_checkpoint_json_names_the_file(made, tmp_path, content):
    ckpt = copy(made, tmp_path)
    (ckpt / "checkpoint.json").write_bytes(content)
    for proc in (embedded(ckpt, "--model", "mf", "--param", "dim=16"), cli("inspect", str(ckpt))):
        one_line_error(proc, str(ckpt / "checkpoint.json"), "corrupt", "backup")


def test_item11_a_corrupt_record_is_one_line_not_a_panic(made, tmp_path):
    import lmdb

    from recsys_stream.storage import ITEMS

    ckpt = copy(made, tmp_path)
    env = lmdb.open(str(ckpt / "state.lmdb"), subdir=True, map_size=1 << 30)
    with env.begin(write=True) as txn:
        for k, v in txn.cursor():
            if k[2:3] == ITEMS:
                b = bytearray(v)
                b[len(b) // 2] ^= 0x40
                txn.put(k, bytes(b))
                break
    env.close()
    one_line_error(embedded(ckpt, "--model", "mf", "--param", "dim=16"), "checksum mismatch", "Refusing")


def test_item5_a_process_of_another_cluster_size_is_refused(made, tmp_path):
    import time

    ckpt = copy(made, tmp_path)
    first = subprocess.Popen([sys.executable, "-m", "recsys_stream.cli", "run", "--rate", "200", "--model", "mf",
                              "--param", "dim=16", "--checkpoint-dir", str(ckpt), "--checkpoint-interval", "0.2"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        # wait for the first process to hold its locks (its first list on stdout)
        assert first.stdout.readline(), first.stderr.read()[-3000:]
        ports = "127.0.0.1:1;127.0.0.1:2"
        proc = cli("run", "--model", "mf", "--param", "dim=16", "--checkpoint-dir", str(ckpt), "--process-id", "1",
                   "--addresses", ports, timeout=120)
        one_line_error(proc, str(ckpt), "cluster of 1 process", "cluster of 2")
        proc = cli("run", "--model", "mf", "--param", "dim=16", "--checkpoint-dir", str(ckpt), timeout=120)
        one_line_error(proc, "in use by another worker process", "process id 0")
    finally:
        first.terminate()
        first.communicate(timeout=120)
    assert first.returncode == 0
    time.sleep(0)  # the directory is resumable afterwards
    assert embedded(ckpt, "--model", "mf", "--param", "dim=16").returncode == 0


# -- item 4: a wrong setting with --checkpoint-fallback never rolls anything back ---------------


def test_item4_other_settings_with_fallback_are_refused_and_destroy_nothing(made, tmp_path):
    ckpt = copy(made, tmp_path)
    before = inspect_json(ckpt)
    from recsys_stream.storage import Store

    st = Store(str(ckpt / "state.lmdb"), readonly=True)
    gens_before = {s: st.generations(s) for s in st.shards()}
    st.close()
    line = one_line_error(embedded(ckpt, "--model", "mf", "--param", "dim=8", "--checkpoint-fallback"),
                          "written with params", "this job runs")
    assert "--checkpoint-fallback would" not in line  # the refusal no longer recommends the flag
    st = Store(str(ckpt / "state.lmdb"), readonly=True)
    assert {s: st.generations(s) for s in st.shards()} == gens_before  # no generation rolled back
    st.close()
    assert inspect_json(ckpt)["digest"] == before["digest"]
    # the right settings resume
    proc = embedded(ckpt, "--model", "mf", "--param", "dim=16", "--log-format", "json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert inspect_json(ckpt)["digest"] == before["digest"]  # the stream had ended: nothing new


def test_item4_checkpointer_level_settings_mismatch_keeps_older_generations(tmp_path):
    from recsys_stream.checkpoint import Checkpointer, SettingsMismatch
    from recsys_stream.generate import GeneratorSettings, generate
    from recsys_stream.models import model_params
    from recsys_stream.shard import Shard, ShardSettings
    from recsys_stream.storage import Store

    log = generate(GeneratorSettings(events=3000, users=100, items=50, seed=4))
    st = Store(str(tmp_path / "s"))
    sh = Shard(0, ShardSettings(model="mf", params=model_params("mf", dim=16), seed=7))
    sh.checkpointer = Checkpointer(sh, st)
    for a in range(0, 3000, 1000):
        part, _ = sh.admit(log.slice(a, a + 1000))
        sh.process(part)
        sh.checkpointer.snapshot(sh.filter.snapshot())
    gens = st.generations(0)
    other = Shard(0, ShardSettings(model="mf", params=model_params("mf", dim=8), seed=7))
    other.checkpointer = Checkpointer(other, st, fallback=True)
    with pytest.raises(SettingsMismatch) as info:
        other.checkpointer.restore(gens[-1])
    assert "--checkpoint-fallback" not in str(info.value)
    assert st.generations(0) == gens and st.head(0) == gens[-1]
    right = Shard(0, ShardSettings(model="mf", params=model_params("mf", dim=16), seed=7))
    right.checkpointer = Checkpointer(right, st, fallback=True)
    right.checkpointer.restore(gens[-1])
    assert st.head(0) == gens[-1]


def test_a_checkpoint_from_before_a_parameter_existed_restores_under_its_old_value(tmp_path):
    """A stored ``params`` without a parameter added since (``checkpoint.ADDED_PARAMS``) was
    made with the value that does what the model did then: a job with that value
    restores it, a job with another value is refused, naming the value it was made with."""
    from recsys_stream.checkpoint import ADDED_PARAMS, Checkpointer, SettingsMismatch
    from recsys_stream.models import model_params
    from recsys_stream.shard import Shard, ShardSettings
    from recsys_stream.storage import Store

    st = Store(str(tmp_path / "s"))

    def checkpointer(**params):
        sh = Shard(0, ShardSettings(model="implicit", params=model_params("implicit", **params), seed=7))
        return Checkpointer(sh, st)

    old = checkpointer(**ADDED_PARAMS).meta()
    for k in ADDED_PARAMS:
        del old["params"][k]  # as a checkpoint written before the parameters were added
    checkpointer(**ADDED_PARAMS).check_meta(old, 1)
    with pytest.raises(SettingsMismatch) as info:
        checkpointer().check_meta(old, 1)  # today's defaults (0.5, 1000)
    assert "'head_negatives': 0.0" in str(info.value) and "'item_decay': 0.0" in str(info.value)
    st.close()


# -- item 10 and JSON logs ------------------------------------------------------------------------


def json_lines(stderr: str) -> list[dict]:
    out = []
    for ln in stderr.splitlines():
        if ln.strip():
            obj = json.loads(ln)  # every line is JSON
            assert isinstance(obj, dict) and {"ts", "level", "msg"} <= set(obj), ln
            out.append(obj)
    return out


def test_item10_oauth_and_other_secrets_never_reach_the_start_log():
    secrets = {"sasl.oauthbearer.config": "principal=svc scope=all clientSecret=S3CRET-OAUTH",
               "sasl.oauthbearer.client.secret": "S3CRET-CLIENT", "ssl.key.pem": "S3CRET-PEM",
               "sasl.kerberos.keytab": "/etc/S3CRET.keytab", "sasl.password": "S3CRET-PW"}
    args = [a for k, v in secrets.items() for a in ("--kafka", f"{k}={v}")]
    proc = cli("run", "--events", "200", "--rate", "0", "--log-format", "json", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "S3CRET" not in proc.stderr
    start = next(o for o in json_lines(proc.stderr) if o["msg"] == "starting")
    assert all(start["config"]["kafka"][k] == "***" for k in secrets)


def test_item11_json_mode_keeps_librdkafka_and_errors_json(kafka, tmp_path):
    # librdkafka complaining about a dead broker, then the user error: all JSON
    proc = cli("run", "--brokers", DEAD_BROKER, "--log-format", "json", timeout=120)
    assert proc.returncode == 2
    objs = json_lines(proc.stderr)
    assert "cannot reach" in objs[-1]["msg"] and objs[-1]["level"] == "error"
    # a configuration error before logging is configured is JSON too
    proc = cli("run", "--workers", "0", "--log-format", "json")
    assert proc.returncode == 2 and "--workers" in json_lines(proc.stderr)[-1]["msg"]


def test_item11_json_mode_wraps_a_worker_panic(made, tmp_path):
    """An error inside a Bytewax worker is a Rust panic on stderr: in JSON mode, JSON."""
    import lmdb

    from recsys_stream.checkpoint import OWNER_PART
    from recsys_stream.storage import EMIT, GLOBALS, USERS

    ckpt = copy(made, tmp_path)
    env = lmdb.open(str(ckpt / "state.lmdb"), subdir=True, map_size=1 << 30)
    n = 0
    with env.begin(write=True) as txn:  # corrupt every record of every user shard's generations:
        for k, v in list(txn.cursor()):  # none verifies, however many the run wrote, so none to fall back to
            if int.from_bytes(k[:2], "big") < OWNER_PART and k[2:3] in (USERS, EMIT, GLOBALS):
                n += 1
                b = bytearray(v)
                b[len(b) // 2] ^= 0x40
                txn.put(k, bytes(b))
    env.close()
    assert n > 0
    proc = embedded(ckpt, "--model", "mf", "--param", "dim=16", "--checkpoint-fallback", "--log-format", "json")
    assert proc.returncode == 2, proc.stderr[-3000:]
    objs = json_lines(proc.stderr)
    assert any("panicked" in o["msg"] for o in objs), proc.stderr[-3000:]
    assert "no older generation is intact" in objs[-1]["msg"]
