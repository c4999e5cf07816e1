"""GET /metrics on a real worker and broker: counts, skips by reason, lag, snapshot and SQL time
as Prometheus reads them; and the table recovery's progress lines after a SIGKILL.

Expected values come from the messages the test itself produced, and the changelog's size from
the broker.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import time
from urllib.parse import quote

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from bucket_app import identity
from bucket_app.settings import load
from tests.support.http import http
from tests.support.kafka import Record, create_topic, end_offsets, produce, unique

pytestmark = pytest.mark.integration

PARTITIONS = 3
TOKEN = "metrics-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(worker, headers: dict[str, str] | None = None) -> Samples:
    answer = http(worker.url + "/metrics", headers=AUTH if headers is None else headers)
    assert answer.status == 200, answer.body[:300]
    assert answer.headers["Content-Type"] == CONTENT_TYPE_LATEST
    found: Samples = {}
    for family in text_string_to_metric_families(answer.body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for (each, labels), value in samples.items()
            if each == name}


def wait_for(condition, timeout_s: float, what: str, worker):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"{what} not reached in {timeout_s} s: {last}\n{worker.tail()}")


def test_metrics_match_what_was_produced(make_worker):
    topic = unique("metrics")
    create_topic(topic, PARTITIONS)
    ts = int(time.time()) - 600
    good = [Record(json.dumps({"origin_server": f"m-{i % 4}", "topic": "x",
                               "timestamp": ts + i % 60}).encode(), i % PARTITIONS)
            for i in range(300)]
    bad = {
        "not_json": [b"not json at all"] * 4,
        "not_object": [b"[1, 2]"] * 3,
        "empty": [b""] * 2,
        "bad_time": [b'{"origin_server": "m-0", "timestamp": "soon"}'] * 5,
    }
    records = list(good)
    for i, value in enumerate(v for values in bad.values() for v in values):
        records.insert(i * 17 % len(records), Record(value, i % PARTITIONS))
    last = produce(topic, records)
    worker = make_worker(topic, partitions=PARTITIONS, extra={"http_token": TOKEN}).start()
    worker.wait_caught_up(last)

    # the token guards /metrics as every route but /health
    assert http(worker.url + "/metrics").status == 401
    assert http(worker.url + "/metrics", headers={"Authorization": "Bearer no"}).status == 401
    assert http(worker.url + "/health").status == 200

    def counted() -> Samples | None:
        s = scrape(worker)
        # the age appears with the first refresh's end, just after the snapshot caught up
        done = s[("bucket_app_messages_counted_total", ())] == len(good)
        return s if done and ("bucket_app_snapshot_age_seconds", ()) in s else None

    found = wait_for(counted, 30, "counted", worker)
    skipped = by_label(found, "bucket_app_messages_skipped_total", "reason")
    assert skipped == {reason: len(values) for reason, values in bad.items()}
    assert found[("bucket_app_snapshot_generation", ())] >= 1
    assert 0 <= found[("bucket_app_snapshot_age_seconds", ())] < 30
    # a single worker recovered every (empty) changelog partition at start-up
    assert by_label(found, "bucket_app_recovery_remaining", "partition") == {
        str(p): 0 for p in range(PARTITIONS)}

    # caught up: every source partition of this worker, which owns them all, has lag 0
    def lag_zero() -> Samples | None:
        s = scrape(worker)
        lag = by_label(s, "bucket_app_consumer_lag", "partition")
        return s if lag == {str(p): 0 for p in range(PARTITIONS)} else None

    wait_for(lag_zero, 15, "lag 0 on every partition", worker)

    # more messages: counted and then lag 0 again, the counter moves by exactly that many
    more = produce(topic, [Record(json.dumps({"origin_server": "m-9", "timestamp": ts}).encode(),
                                  p) for p in range(PARTITIONS) for _ in range(10)])
    worker.wait_caught_up(more)
    found = wait_for(lag_zero, 15, "lag 0 after more messages", worker)
    assert found[("bucket_app_messages_counted_total", ())] == len(good) + 10 * PARTITIONS

    before = scrape(worker)[("bucket_app_sql_query_seconds_count", ())]
    answer = http(worker.url + "/api/v1/sql?q=" + quote('SELECT sum(count) AS n FROM "default"'),
                  headers=AUTH)
    assert answer.status == 200 and answer.json()["rows"] == [{"n": len(good) + 30}]
    after = scrape(worker)
    assert after[("bucket_app_sql_query_seconds_count", ())] == before + 1
    assert after[("bucket_app_sql_query_seconds_sum", ())] > 0

    # one row per (server, topic, 20 s bucket) of the messages produced
    rows = {(f"m-{i % 4}", "x", (ts + i % 60) // 20 * 20) for i in range(len(good))}
    rows.add(("m-9", None, ts // 20 * 20))
    assert ("bucket_app_snapshot_rows", ()) in after, "the snapshot reader gives no row count"
    assert after[("bucket_app_snapshot_rows", ())] == len(rows)


RECOVERING = re.compile(r"bucket_app: recovering table counts: ([\d,]+)/([\d,]+) records")
RECOVERED = re.compile(r"bucket_app: recovered table counts: ([\d,]+) records in ")


def test_restart_after_sigkill_logs_the_recovery_progress(make_worker):
    """A worker whose local tables are gone (SIGKILL, then a new disk) restores them from the
    changelog in bulk, and says how far it is in the log and in /metrics."""
    topic = unique("recover")
    create_topic(topic, PARTITIONS)
    ts = int(time.time()) - 600
    # one window-key a message: as many changelog records as messages, enough to take a while
    n = 60_000
    last = produce(topic, [Record(json.dumps({"origin_server": f"k{i}", "timestamp": ts})
                                  .encode(), i % PARTITIONS) for i in range(n)])
    worker = make_worker(topic, partitions=PARTITIONS).start()
    worker.wait_caught_up(last, timeout_s=180)
    worker.stop(signal.SIGKILL)
    settings = load(worker.settings_path, {})
    changelog = identity.changelog_topic(settings, "counts")
    records = sum(end_offsets(changelog, PARTITIONS).values())
    assert records >= n  # a record per key, plus the partitions' progress records
    worker.log_path.write_bytes(b"")
    tabledir = identity.tabledir(settings)
    shutil.rmtree(tabledir if tabledir.is_absolute() else worker.directory / tabledir)

    worker.start()
    worker.wait_caught_up(last, timeout_s=180)
    log = worker.log_path.read_text(errors="replace")
    assert f"restored {records:,} changelog records of partitions" in log, log[-3000:]
    lines = "\n".join(line for line in log.splitlines() if "bucket_app: recover" in line)
    progress = [(int(a.replace(",", "")), int(b.replace(",", ""))) for a, b in
                RECOVERING.findall(log)]
    # every line counts all the changelog records there are, and the restored ones only grow
    assert progress and all(total == records for _, total in progress), lines or log[-3000:]
    assert [done for done, _ in progress] == sorted(done for done, _ in progress), lines
    assert [int(done.replace(",", "")) for done in RECOVERED.findall(log)] == [records], lines
    found = scrape(worker, headers={})
    assert by_label(found, "bucket_app_recovery_remaining", "partition") == {
        str(p): 0 for p in range(PARTITIONS)}
    assert sum(http(worker.url + "/c/" + quote('SELECT sum(count) AS n FROM "default"'))
               .json()[0].values()) == n
