"""Readers: every format, malformed lines reported with line number and reason, the read
goes on, event-time order is stable, ids are strings."""

from __future__ import annotations

import orjson
import pytest

from recsys_stream.features import FeatureStore
from recsys_stream.io.readers import ReaderError, detect_format, read_events, write_dead_letters
from recsys_stream.io.side import read_item_features, read_user_features


def write(tmp_path, name, data: bytes):
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


def test_udata_with_malformed_lines(tmp_path):
    path = write(tmp_path, "u.data", b"1\t10\t5\t300\n2\t20\tfive\t100\n\n3\t30\t4\n4\t40\t3\t100\n\xff\xfe\t1\t1\t1\n")
    res = read_events(path)
    assert res.format == "udata"
    assert len(res.events) == 2
    # event-time order, stable for ties (line 5 at t=100 comes before line 1 at t=300)
    assert list(res.events.user) == ["4", "1"]
    assert list(res.events.offset) == [5, 1]
    lines = {e.line: e.reason for e in res.errors}
    assert set(lines) == {2, 4, 6}
    assert "rating" in lines[2] and "not a number" in lines[2]
    assert "expected 4 fields" in lines[4]
    assert "utf-8" in lines[6].lower()
    dl = tmp_path / "dl.jsonl"
    write_dead_letters(str(dl), res.errors)
    recs = [orjson.loads(x) for x in dl.read_bytes().splitlines()]
    assert recs[0]["raw"] == "2\t20\tfive\t100" and recs[0]["line"] == 2
    assert "raw_b64" in recs[2]  # bytes that are not UTF-8 are kept, base64


def test_dat_and_mlcsv(tmp_path):
    dat = write(tmp_path, "ratings.dat", b"1::1193::5::978300760\n1::661::3::978302109\nbad\n")
    res = read_events(dat)
    assert res.format == "dat" and len(res.events) == 2 and res.errors[0].line == 3
    csv = write(tmp_path, "ratings.csv", b"userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,x,1\n")
    res = read_events(csv)
    assert res.format == "mlcsv" and len(res.events) == 1
    assert res.events.value[0] == pytest.approx(2.5)
    assert res.errors[0].line == 3


def test_jsonl_validation(tmp_path):
    lines = [
        {"user": 42, "item": "a", "ts": 10, "type": "click", "value": 1},
        {"user": "42", "item": "b", "ts": "2024-01-01T00:00:00Z", "type": "rating", "value": 4.5,
         "context": {"device": "ios"}},
        {"user": "x", "item": "b", "ts": 1, "type": "teleport", "value": 1},
        {"user": "x", "item": "b", "ts": 1, "type": "view"},
        {"user": "x" * 300, "item": "b", "ts": 1, "type": "view", "value": 1},
        {"user": "x", "item": "b", "ts": 1, "type": "view", "value": float("nan")},
    ]
    raw = b"\n".join(orjson.dumps(x) if i != 5 else b'{"user":"x","item":"b","ts":1,"type":"view","value":NaN}'
                     for i, x in enumerate(lines)) + b"\n{not json\n"
    res = read_events(write(tmp_path, "ev.jsonl", raw))
    assert len(res.events) == 2
    assert set(res.events.user) == {"42"}  # 42 and "42" are one user
    assert res.events.ts[1] == pytest.approx(1704067200.0)
    assert res.events.ctx_ptr[-1] == 1  # one context feature on the second event
    reasons = {e.line: e.reason for e in res.errors}
    assert "unknown event type" in reasons[3]
    assert "missing field(s) value" in reasons[4]
    assert "at most 256" in reasons[5]
    assert "JSON" in reasons[6] or "NaN" in reasons[6]
    assert "not valid JSON" in reasons[7]


def test_csv_with_mapping(tmp_path):
    path = write(tmp_path, "log.csv", b"when;who;what;kind\n5;u1;sku9;purchase\n3;u2;sku1;view\n4;u3\n")
    res = read_events(path, fmt="csv", columns="user=who,item=what,ts=when,type=kind", delimiter=";")
    assert list(res.events.user) == ["u2", "u1"]
    assert res.errors[0].line == 4 and "columns" in res.errors[0].reason
    with pytest.raises(ReaderError, match="lacks column"):
        read_events(path, fmt="csv", columns="user=nobody,item=what", delimiter=";")


def test_unknown_format_is_a_clear_error(tmp_path):
    path = write(tmp_path, "mystery.txt", b"hello world\n")
    with pytest.raises(ReaderError, match="--format"):
        detect_format(path)
    with pytest.raises(ReaderError, match="no such file"):
        read_events(str(tmp_path / "missing.data"))


def test_side_features(tmp_path):
    users = write(tmp_path, "u.user", b"1|24|M|technician|85711\n2|x|F|other|94043\n3|53|F|other|32067\n")
    items = write(tmp_path, "u.item", "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1\n2|Caf\xe9|||u|0|1\n".encode("latin-1"))
    (tmp_path / "u.genre").write_bytes(b"unknown|0\nAction|1\nAdventure|2\nAnimation|3\nChildren's|4\n")
    store, errors = FeatureStore(), []
    assert read_user_features(users, store, errors) == 2
    assert store.users["1"] == ["age=18-24", "gender=M", "occ=technician"]
    assert errors[0].line == 2
    assert read_item_features(items, store, errors) == 2
    assert store.items["1"] == ["genre=Animation", "genre=Children's"]
    assert store.items["2"] == ["genre=Action"]
