"""``bucket-app produce`` and ``query`` against the real broker and a real worker.

The CLI runs as users run it, a subprocess with the worker's settings file; the counts are read
back from the worker over HTTP and checked against what the producer reported and what the
topic holds.
"""

from __future__ import annotations

import re

import pytest

from tests.support import REPO
from tests.support.kafka import create_topic, end_offsets, unique
from tests.support.worker import bucket_app

pytestmark = pytest.mark.integration

PARTITIONS = 6
SUMMARY = re.compile(r"^sent (\d+) to topic (\S+) \(partitions (.*)\)$")


def produce_and_wait(worker, *args: str) -> dict[int, int]:
    """Run ``bucket-app produce``; its per-partition report, checked against the topic."""
    done = bucket_app("produce", *args, settings=worker.settings_path)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1, done.stdout
    match = SUMMARY.match(lines[0])
    assert match, lines[0]
    assert match.group(2) == worker.topic
    reported = {int(p): int(n) for p, n in (part.split(": ")
                                            for part in match.group(3).split(", "))}
    assert sum(reported.values()) == int(match.group(1))
    # a fresh topic: what the producer says it wrote is exactly what the topic holds
    ends = end_offsets(worker.topic, PARTITIONS)
    assert {p: n for p, n in ends.items() if n} == reported
    worker.wait_caught_up({p: n - 1 for p, n in ends.items() if n})
    return reported


def test_produce_then_query_counts_exactly(make_worker):
    topic = unique("cli")
    create_topic(topic, PARTITIONS)
    worker = make_worker(topic).start()

    reported = produce_and_wait(worker, "--count", "500", "--keys", "5")
    assert sum(reported.values()) == 500

    answer = worker.get("/api/v1/buckets")
    assert answer.status == 200
    rows = answer.json()["rows"]
    assert sum(row["count"] for row in rows) == 500
    # five field combinations, each with a fifth of the messages
    per_key: dict[tuple, int] = {}
    for row in rows:
        key = (row["server_name"], row["topic"])
        per_key[key] = per_key.get(key, 0) + row["count"]
    assert per_key == {(f"origin_server-{k}", f"topic-{k}"): 100 for k in range(5)}

    done = bucket_app("query", 'SELECT sum(count) AS n FROM "default"',
                      settings=worker.settings_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["  n", "---", "500"]

    done = bucket_app("query", "SELECT server_name, sum(count) AS n FROM \"default\" "
                      "WHERE server_name = ? GROUP BY 1", "--format", "csv",
                      "-p", "origin_server-3", settings=worker.settings_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "server_name,n\norigin_server-3,100\n"

    # the worker's own error, on one line, exit 1
    done = bucket_app("query", "DELETE FROM \"default\"", settings=worker.settings_path)
    assert done.returncode == 1
    assert done.stdout == ""
    assert re.fullmatch(r"bucket_app: HTTP 40\d: [^\n]+\n", done.stderr), done.stderr


def test_produce_avro_is_counted(make_worker):
    topic = unique("cli-avro")
    create_topic(topic, PARTITIONS)
    schema = REPO / "schemas" / "example.avsc"
    worker = make_worker(topic, extra={"avro_val_schema": str(schema)},
                         msg_map={"origin_server": "server_name", "meta.host": "topic"}).start()

    reported = produce_and_wait(worker, "--count", "300", "--keys", "3", "--spread", "60")
    assert sum(reported.values()) == 300

    rows = worker.get("/a/default").json()
    assert sum(row["count"] for row in rows) == 300
    assert {(row["server_name"], row["topic"]) for row in rows} == {
        (f"origin_server-{k}", f"host-{k}") for k in range(3)}
    assert not any(worker.health()["worker"]["skipped"].values())
