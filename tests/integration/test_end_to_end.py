"""End to end on the real broker: messages in, exact counts out over HTTP and in the SQLite file.

Expected counts are computed here, independently of bucket_app's code: integer arithmetic on the
timestamps the test itself chose.
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import signal
import sqlite3
import struct
import subprocess
import time
from collections import Counter
from urllib.parse import quote

import fastavro
import pytest

from tests.support import REPO
from tests.support.http import http
from tests.support.kafka import Record, create_topic, produce, unique

pytestmark = pytest.mark.integration

INTERVAL = 20


def expected_bucket(ts: float) -> int:
    return math.floor(ts / INTERVAL) * INTERVAL


def rows_by_key(rows: list[dict]) -> dict[tuple, int]:
    found: dict[tuple, int] = {}
    for row in rows:
        assert row["bucket_end"] - row["bucket_start"] == INTERVAL
        key = (row["server_name"], row["topic"], row["bucket_start"])
        assert key not in found, f"duplicate row {key}"
        found[key] = row["count"]
    return found


@pytest.fixture
def seed_worker(make_worker):
    topic = unique("seed")
    create_topic(topic, 6)
    return make_worker(topic).start()


def test_seed_example_end_to_end(seed_worker):
    """The seed README's example: produce one message, read it back through /a, /c, /rst, /r."""
    worker = seed_worker
    record_ts_ms = int((time.time() - 300) * 1000)
    last = produce(worker.topic, [Record(
        json.dumps({"origin_server": "Iceman", "topic": "Dreams"}).encode(),
        partition=2, timestamp_ms=record_ts_ms,
    )])
    worker.wait_caught_up(last)

    answer = worker.get("/a/default")
    assert answer.status == 200
    assert answer.headers["Content-Type"].startswith("application/json")
    rows = answer.json()
    start = expected_bucket(record_ts_ms / 1000)
    assert len(rows) == 1
    row = rows[0]
    # the seed's columns, then what bucket_app adds: RST_ID (as the seed did), late and final
    assert list(row) == ["server_name", "topic", "bucket_start", "bucket_end", "count", "RST_ID",
                         "late", "final"]
    assert (row["server_name"], row["topic"], row["count"]) == ("Iceman", "Dreams", 1)
    # one message, 300 s old, and no later one in the other partitions: nothing is final
    assert (row["late"], row["final"]) == (0, 0)
    assert (row["bucket_start"], row["bucket_end"]) == (start, start + INTERVAL)
    assert isinstance(row["RST_ID"], int) and row["RST_ID"] >= 1

    # the seed's literal query, with the table named by the reserved word `default`
    sql = "Select * FROM default WHERE count=1"
    assert worker.get("/c/" + quote(sql)).json() == rows
    assert worker.get("/c/" + quote("Select * FROM default WHERE count=0")).json() == []

    rst = worker.get("/rst")
    assert rst.status == 200 and isinstance(rst.json(), int) and rst.json() >= 1
    reset = worker.get("/r")
    assert reset.status == 200 and reset.json() is None
    # unlike the seed, a reset loses nothing: the counts live in the table, not in the snapshot
    time.sleep(1.0)
    after = worker.get("/a/default").json()
    assert [{k: v for k, v in r.items() if k != "RST_ID"} for r in after] == [
        {k: v for k, v in row.items() if k != "RST_ID"}]


def test_ten_thousand_messages_exact_with_bad_input(seed_worker):
    """10,000 good messages over keys, buckets and 6 partitions, shuffled, plus bad ones."""
    worker = seed_worker
    rng = random.Random(20261128)
    base = expected_bucket(time.time() - 7200)
    expected: Counter[tuple] = Counter()
    records: list[Record] = []
    for i in range(10_000):
        server = f"bulk-{rng.randrange(5)}"
        topic = f"t{rng.randrange(3)}"
        kind = i % 50
        if kind == 0:  # no time field: the record timestamp is the event time
            ts = base + rng.randrange(600)
            msg = {"origin_server": server, "topic": topic}
            records.append(Record(json.dumps(msg).encode(), rng.randrange(6), ts * 1000))
        elif kind == 1:  # a mapped field missing: NULL in its column, still counted
            ts = base + rng.randrange(600)
            msg = {"origin_server": server, "timestamp": ts}
            topic = None
            records.append(Record(json.dumps(msg).encode(), rng.randrange(6)))
        else:
            ts = base + rng.randrange(600) + (rng.random() if kind == 2 else 0)
            msg = {"origin_server": server, "topic": topic, "timestamp": ts, "n": i}
            records.append(Record(json.dumps(msg).encode(), rng.randrange(6)))
        expected[(server, topic, expected_bucket(ts))] += 1
    rng.shuffle(records)  # out of order within every partition
    bad = {
        "not_json": [b"this is not json", b"{\"unterminated\": "],
        "not_object": [b"[1, 2, 3]", b"42"],
        "bad_time": [b'{"origin_server": "bulk-0", "topic": "t0", "timestamp": "soon"}'],
        "empty": [b""],
    }
    bad_counts: Counter[str] = Counter()
    for reason, samples in bad.items():
        for j in range(30):
            position = rng.randrange(len(records))
            records.insert(position, Record(samples[j % len(samples)], rng.randrange(6)))
            bad_counts[reason] += 1

    last = produce(worker.topic, records)
    status = worker.wait_caught_up(last, timeout_s=180)

    rows = [r for r in worker.get("/a/default").json() if r["server_name"].startswith("bulk-")]
    assert rows_by_key(rows) == dict(expected)
    assert sum(r["count"] for r in rows) == 10_000
    skipped = status["worker"]["skipped"]
    assert {k: skipped.get(k, 0) for k in bad_counts} == dict(bad_counts)
    # the bad records were logged with topic, partition and offset
    log = worker.log_path.read_text(errors="replace")
    assert f"skipped bad record topic={worker.topic} partition=" in log
    assert "offset=" in log

    # the snapshot is a plain SQLite file, readable while the worker runs
    path = worker.directory / "snapshot.sqlite3"
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        conn.row_factory = sqlite3.Row
        file_rows = [dict(r) for r in conn.execute(
            "SELECT * FROM \"default\" WHERE server_name LIKE 'bulk-%'")]
    assert rows_by_key(file_rows) == dict(expected)

    # the JSON API filters the same data
    answer = worker.get("/api/v1/buckets?server_name=bulk-1&topic=t2")
    assert answer.status == 200
    body = answer.json()
    want = {k: v for k, v in expected.items() if k[0] == "bulk-1" and k[1] == "t2"}
    assert rows_by_key(body["rows"]) == want
    assert body["truncated"] is False
    assert body["caught_up"] is True


def test_http_errors_are_json_4xx(seed_worker):
    worker = seed_worker
    worker.wait_caught_up(produce(worker.topic, [Record(b'{"origin_server": "a"}', 0)]))
    cases = [
        ("/a/nope", None, 404),
        ("/no/such/route", None, 404),
        ("/c/" + quote("DROP TABLE default"), None, 400),
        ("/c/" + quote("SELECT * FROM default; DELETE FROM default"), None, 400),
        ("/c/" + quote("SELEC nonsense"), None, 400),
        ("/c/" + quote("SELECT * FROM missing_table"), None, 400),
        ("/c/" + quote("ATTACH DATABASE '/tmp/x.db' AS x"), None, 400),
        ("/c/" + quote("SELECT load_extension('x')"), None, 403),
        ("/api/v1/buckets?bogus=1", None, 400),
        ("/api/v1/buckets?from=yesterday", None, 400),
        ("/api/v1/buckets?limit=-3", None, 400),
        ("/api/v1/sql", None, 400),
        ("/api/v1/sql", b"{not json", 400),
        ("/api/v1/sql", b'{"sql": 5}', 400),
        ("/api/v1/sql", b'{"sql": "SELECT 1", "params": "x"}', 400),
    ]
    for path, data, status in cases:
        answer = http(worker.url + path, data=data, method="POST" if data else "GET")
        assert answer.status == status, (path, answer.status, answer.body[:300])
        body = answer.json()
        assert isinstance(body["error"], str) and body["error"], path
        assert b"Traceback" not in answer.body
    answer = http(worker.url + "/rst", method="DELETE")
    assert answer.status == 405 and "error" in answer.json()
    # the snapshot is unchanged by everything above
    assert worker.get("/c/" + quote("SELECT count(*) AS n FROM default")).json() == [{"n": 1}]


def test_sql_api_with_bound_parameters(seed_worker):
    worker = seed_worker
    ts = expected_bucket(time.time() - 100)
    last = produce(worker.topic, [
        Record(json.dumps({"origin_server": f"s{i % 3}", "topic": "x", "timestamp": ts}).encode(),
               i % 6) for i in range(30)
    ])
    worker.wait_caught_up(last)
    body = json.dumps({"sql": "SELECT server_name, count FROM default WHERE server_name = ? "
                              "ORDER BY server_name", "params": ["s1"]}).encode()
    answer = http(worker.url + "/api/v1/sql", data=body, method="POST",
                  headers={"Content-Type": "application/json"})
    assert answer.status == 200, answer.body
    payload = answer.json()
    assert payload["columns"] == ["server_name", "count"]
    assert payload["rows"] == [{"server_name": "s1", "count": 10}]
    assert payload["truncated"] is False
    get = worker.get("/api/v1/sql?q=" + quote("SELECT sum(count) AS n FROM default"))
    assert get.json()["rows"] == [{"n": 30}]


AVRO_SCHEMA = json.loads((REPO / "schemas" / "example.avsc").read_text())


def avro_body(record: dict) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(AVRO_SCHEMA), record)
    return buf.getvalue()


def test_avro_both_framings_exact(make_worker):
    topic = unique("avro")
    create_topic(topic, 4)
    worker = make_worker(
        topic,
        extra={"avro_val_schema": str(REPO / "schemas" / "example.avsc")},
        msg_map={"origin_server": "server_name", "meta.host": "host"},
        schema={"server_name": "TEXT", "host": "TEXT", "bucket_start": "INTEGER",
                "bucket_end": "INTEGER", "count": "INTEGER"},
    ).start()
    rng = random.Random(7)
    base = expected_bucket(time.time() - 3600)
    expected: Counter[tuple] = Counter()
    records = []
    for i in range(2_000):
        ts = base + rng.randrange(200)
        server, host = f"av-{rng.randrange(4)}", f"h{rng.randrange(2)}"
        body = avro_body({"origin_server": server, "topic": "t", "timestamp": ts,
                          "meta": {"host": host}})
        if i % 2:  # Confluent wire format: magic 0, schema id, body
            body = b"\x00" + struct.pack(">I", 42) + body
        records.append(Record(body, rng.randrange(4)))
        expected[(server, host, expected_bucket(ts))] += 1
    mismatched = json.dumps({"origin_server": "x"}).encode()
    records.extend(Record(mismatched, p) for p in range(4))
    last = produce(topic, records)
    status = worker.wait_caught_up(last)
    rows = worker.get("/a/default").json()
    found = {(r["server_name"], r["host"], r["bucket_start"]): r["count"] for r in rows}
    assert found == dict(expected)
    assert status["worker"]["skipped"].get("avro_mismatch") == 4


def test_iso_event_times_exact(make_worker):
    """bucket_type iso: Z, numeric offsets, fractions and zone-less (UTC) times, all exact."""
    from datetime import UTC, datetime, timedelta, timezone

    topic = unique("iso")
    create_topic(topic, 3)
    worker = make_worker(topic, partitions=3, extra={"bucket_type": "iso"}).start()
    rng = random.Random(17)
    base = datetime.fromtimestamp(expected_bucket(time.time() - 5000), UTC)
    expected: Counter[tuple] = Counter()
    records = []
    for i in range(3_000):
        moment = base + timedelta(seconds=rng.randrange(400), microseconds=rng.randrange(10**6))
        style = i % 4
        if style == 0:
            text = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        elif style == 1:
            zone = timezone(timedelta(hours=2))
            text = moment.astimezone(zone).isoformat()
        elif style == 2:
            zone = timezone(-timedelta(hours=5, minutes=30))
            text = moment.astimezone(zone).strftime("%Y-%m-%dT%H:%M:%S%z")
            moment = moment.replace(microsecond=0)
        else:
            text = moment.replace(tzinfo=None).isoformat()  # no zone: UTC
        server = f"iso-{rng.randrange(3)}"
        body = {"origin_server": server, "topic": "t", "timestamp": text}
        records.append(Record(json.dumps(body).encode(), rng.randrange(3)))
        expected[(server, "t", expected_bucket(moment.timestamp()))] += 1
    last = produce(topic, records)
    worker.wait_caught_up(last)
    assert rows_by_key(worker.get("/a/default").json()) == dict(expected)


def test_missing_source_topic_is_created_with_the_configured_partitions(make_worker):
    """Not with the broker's default (1): the probe never lets a metadata request create it."""
    topic = unique("fresh")
    worker = make_worker(topic, partitions=5).start()
    assert sorted(worker.health()["partitions"]) == [str(p) for p in range(5)]
    body = json.dumps({"origin_server": "n", "topic": "t", "timestamp": time.time() - 100})
    last = produce(topic, [Record(body.encode(), p) for p in range(5)])
    worker.wait_caught_up(last)
    assert [r["count"] for r in worker.get("/a/default").json()] == [5]


def test_worker_stops_with_an_error_when_its_snapshot_process_dies(make_worker):
    """A snapshot that no longer follows the changelog is never served: the worker exits."""
    topic = unique("snapdies")
    create_topic(topic, 2)
    worker = make_worker(topic, partitions=2).start()
    body = json.dumps({"origin_server": "n", "topic": "t", "timestamp": time.time() - 100})
    worker.wait_caught_up(produce(topic, [Record(body.encode(), p) for p in range(2)]))
    assert worker.proc is not None
    children = subprocess.run(["pgrep", "-P", str(worker.proc.pid), "-f",
                               "bucket_app.snapshot.process"],
                              capture_output=True, text=True, check=True).stdout.split()
    assert len(children) == 1
    os.kill(int(children[0]), signal.SIGKILL)
    produce(topic, [Record(body.encode(), 0)])  # the next refresh finds the child gone
    assert worker.proc.wait(timeout=60) != 0
    assert "SnapshotError('the snapshot process ended" in worker.log_path.read_text()
