"""Configuration precedence (flags > environment > file > defaults), validation, redaction."""

from __future__ import annotations

import pytest

from recsys_stream.config import ConfigError
from recsys_stream.configload import load_config

TOML = """
[job]
brokers = "file:9092"
input_topic = "from-file"
output_topic = "out-file"
k = 5
refresh_interval_s = 2.5
workers = 2

[model]
name = "mf"

[model.params]
dim = 8
lr = 0.05

[kafka]
"security.protocol" = "SASL_SSL"
"sasl.password" = "hunter2"
"""


def test_precedence_flags_over_env_over_file(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(TOML)
    env = {"RECSYS_INPUT_TOPIC": "from-env", "RECSYS_K": "7", "RECSYS_PARAM_LR": "0.01",
           "RECSYS_KAFKA_SASL__USERNAME": "bob", "HOME": "/root"}
    cfg = load_config(str(path), env=env, flags={"k": 9})
    assert cfg.brokers == "file:9092"  # file only
    assert cfg.input_topic == "from-env"  # env beats file
    assert cfg.k == 9  # flag beats env and file
    assert cfg.output_topic == "out-file" and cfg.refresh_interval_s == 2.5 and cfg.workers == 2
    assert cfg.model == "mf"
    assert dict(cfg.params) == {"dim": 8, "lr": "0.01"}  # env param beats file param
    kc = cfg.kafka_config()
    assert kc["bootstrap.servers"] == "file:9092" and kc["sasl.username"] == "bob"
    assert kc["security.protocol"] == "SASL_SSL"
    # secrets never appear in what is logged
    d = cfg.describe()
    assert d["kafka"]["sasl.password"] == "***" and "hunter2" not in repr(d)


def test_defaults_without_file_or_env():
    cfg = load_config(None, env={})
    assert cfg.brokers == "" and cfg.model == "itemknn" and cfg.k == 10 and cfg.start == "earliest"


@pytest.mark.parametrize("env,flags,match", [
    ({"RECSYS_K": "ten"}, {}, "k \\(from \\$RECSYS_K\\)"),
    ({}, {"model": "nope"}, "unknown 'nope'"),
    ({}, {"start": "middle"}, "earliest"),
    ({"RECSYS_WORKERS": "0"}, {}, "workers"),
])
def test_bad_settings_name_their_source(env, flags, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, env=env, flags=flags)


def test_unknown_key_in_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[job]\nbrokerz = 'x'\n")
    with pytest.raises(ConfigError, match="unknown setting 'brokerz'"):
        load_config(str(path), env={})
