"""CSV and NDJSON answers of a real worker: each parses back (csv module, json per line) to
exactly the rows of the JSON answer to the same request, with the same snapshot headers, and
an answer cut at sql_row_limit says so.
"""

from __future__ import annotations

import csv
import io
import json
import random
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from tests.support.http import HttpAnswer, http
from tests.support.kafka import Record, create_topic, produce, unique
from tests.support.worker import Worker

pytestmark = pytest.mark.integration

ROW_LIMIT = 100
PARTITIONS = 3
SNAPSHOT_HEADERS = ("X-RST-ID", "X-Snapshot-Caught-Up", "X-Complete", "X-Position-Token",
                    "X-Truncated")
MEDIA = {"csv": "text/csv", "ndjson": "application/x-ndjson"}


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    topic = unique("formats")
    create_topic(topic, PARTITIONS)
    worker = Worker(tmp_path_factory.mktemp("formats") / "w", topic=topic,
                    app_id=unique("app"), partitions=PARTITIONS,
                    extra={"sql_row_limit": str(ROW_LIMIT)})
    rng = random.Random(7)
    base = int(time.time()) // 86_400 * 86_400 - 86_400
    servers = ["plain", 'a "quoted", name', "line\nbreak", "ünïcode"]
    records = []
    for i in range(400):
        message: dict[str, Any] = {"origin_server": rng.choice(servers),
                                   "timestamp": base + rng.randrange(0, 86_400, 7)}
        if i % 10:  # else no topic: NULL
            message["topic"] = f"t{rng.randrange(3)}"
        records.append(Record(json.dumps(message).encode(), rng.randrange(PARTITIONS)))
    try:
        worker.start()
        worker.wait_caught_up(produce(topic, records), timeout_s=180)
        yield worker
    finally:
        worker.stop()


def get(worker: Worker, path: str, fmt: str | None = None, how: str = "param",
        data: bytes | None = None) -> HttpAnswer:
    headers = {}
    if fmt is not None and how == "param":
        path += ("&" if "?" in path else "?") + f"format={fmt}"
    elif fmt is not None:
        headers["Accept"] = MEDIA[fmt]
    if data is not None:
        headers["Content-Type"] = "application/json"
    return http(worker.url + path, data=data, method="POST" if data else "GET", headers=headers)


def rows_of(answer: HttpAnswer) -> list[dict[str, Any]]:
    body = answer.json()
    rows: list[dict[str, Any]] = body if isinstance(body, list) else body["rows"]
    return rows


ROUTES = [
    ("/a/default", "param", None),
    ("/a/default", "accept", None),
    ("/c/" + quote("SELECT * FROM default WHERE topic IS NULL OR count > 1 ORDER BY rowid"),
     "accept", None),
    ("/c/" + quote("SELECT * FROM default ORDER BY bucket_start DESC"), "accept", None),
    ("/api/v1/buckets?server_name=" + quote('a "quoted", name'), "param", None),
    ("/api/v1/buckets?granularity=1h&tz=Europe/Berlin&group_by=server_name", "accept", None),
    ("/api/v1/sql?q=" + quote("SELECT server_name, topic, sum(count) AS n, avg(count) AS a "
                              "FROM default GROUP BY 1, 2 ORDER BY 1, 2"), "param", None),
    ("/api/v1/sql", "param",
     b'{"sql": "SELECT * FROM \\"default\\" WHERE server_name = ? ORDER BY rowid", '
     b'"params": ["line\\nbreak"]}'),
]


@pytest.mark.parametrize(("path", "how", "data"), ROUTES)
def test_csv_and_ndjson_are_the_json_rows(worker: Worker, path: str, how: str,
                                          data: bytes | None) -> None:
    answer = get(worker, path, data=data)
    assert answer.status == 200, answer.body[:300]
    want = rows_of(answer)
    assert want
    truncated = answer.headers["X-Truncated"] == "true"
    assert truncated == (len(want) == ROW_LIMIT)

    as_csv = get(worker, path, "csv", how, data)
    assert as_csv.status == 200 and as_csv.headers["Content-Type"].startswith("text/csv")
    table = list(csv.reader(io.StringIO(as_csv.body.decode(), newline="")))
    assert table[0] == list(want[0])
    assert table[1:] == [["" if v is None else str(v) for v in row.values()] for row in want]

    as_ndjson = get(worker, path, "ndjson", how, data)
    assert as_ndjson.status == 200
    assert as_ndjson.headers["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in as_ndjson.body.decode().splitlines()]
    marker = [{"truncated": True, "rows": ROW_LIMIT}] if truncated else []
    assert lines == want + marker

    for other in (as_csv, as_ndjson):
        for name in SNAPSHOT_HEADERS:
            assert other.headers[name] == answer.headers[name], name


def test_the_row_limit_marks_truncation(worker: Worker) -> None:
    answer = get(worker, "/a/default", "ndjson")
    lines = answer.body.decode().splitlines()
    assert len(lines) == ROW_LIMIT + 1
    assert json.loads(lines[-1]) == {"truncated": True, "rows": ROW_LIMIT}
    assert answer.headers["X-Truncated"] == "true"
    answer = get(worker, "/c/" + quote("SELECT * FROM default"), "csv", "accept")
    assert len(list(csv.reader(io.StringIO(answer.body.decode(), newline="")))) == ROW_LIMIT + 1
    assert answer.headers["X-Truncated"] == "true"


@pytest.mark.parametrize(("path", "fmt", "how", "status"), [
    ("/a/default?format=xml", None, "param", 400),
    ("/api/v1/sql?q=SELECT%201&format=tsv", None, "param", 400),
    ("/c/" + quote("SELECT nope FROM default"), "csv", "accept", 400),
    ("/api/v1/buckets?granularity=7s", "ndjson", "param", 400),
])
def test_errors_stay_json(worker: Worker, path: str, fmt: str | None, how: str,
                          status: int) -> None:
    answer = get(worker, path, fmt, how)
    assert answer.status == status
    assert answer.headers["Content-Type"].startswith("application/json")
    assert answer.json()["status"] == status


def test_an_accept_header_nothing_matches_is_406(worker: Worker) -> None:
    answer = http(worker.url + "/c/SELECT%201", headers={"Accept": "text/html"})
    assert answer.status == 406 and answer.json()["status"] == 406
    # a browser's Accept ends in */*: JSON
    answer = http(worker.url + "/a/default", headers={
        "Accept": "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"})
    assert answer.status == 200 and answer.headers["Content-Type"].startswith(
        "application/json")
