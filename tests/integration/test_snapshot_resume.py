"""The SQLite snapshot survives a worker restart, on the real broker: a restarted worker reads
the changelog's tail from the offsets its snapshot stored, unless the snapshot's settings
changed.

One worker directory (settings file, data_dir, snapshot) across each restart. Expected counts
are computed here from the messages the test produced, independently of bucket_app's code.
"""

from __future__ import annotations

import ast
import json
import re
import signal
import time

import pytest

from tests.support.kafka import (
    BackgroundProducer,
    Record,
    bulk_records,
    create_topic,
    produce,
    unique,
)
from tests.support.worker import Worker, counts_of

pytestmark = pytest.mark.integration

RESUMED = re.compile(r"snapshot: resuming generation (\d+) \((\d+) rows\) at changelog offsets "
                     r"(\{[^}]*\})")
REBUILT = "snapshot: rebuilding from the changelog: "


def restart(worker: Worker, sig: int, **changes: object) -> str:
    """Stop ``worker`` with ``sig``, apply ``changes`` to it, start it again; return what it
    logged since it was stopped, once that includes the snapshot's resume-or-rebuild line."""
    worker.stop(sig)
    for name, value in changes.items():
        setattr(worker, name, value)
    logged = len(worker.log_path.read_bytes())
    worker.start()
    deadline = time.monotonic() + 30
    while True:
        log = worker.log_path.read_bytes()[logged:].decode(errors="replace")
        if snapshot_lines(log) or time.monotonic() > deadline:
            return log
        time.sleep(0.1)


def snapshot_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "snapshot: re" in line]


def combined(*counts: dict[tuple, int]) -> dict[tuple, int]:
    total: dict[tuple, int] = {}
    for part in counts:
        for key, n in part.items():
            total[key] = total.get(key, 0) + n
    return total


def rebucketed(records: list[Record], interval: int) -> dict[tuple, int]:
    """(server, topic, bucket start) of each message at ``interval`` s buckets."""
    found: dict[tuple, int] = {}
    for record in records:
        assert record.value is not None
        msg = json.loads(record.value)
        key = (msg["origin_server"], msg["topic"], msg["timestamp"] // interval * interval)
        found[key] = found.get(key, 0) + 1
    return found


def test_a_restarted_worker_resumes_its_snapshot_and_counts_exactly(make_worker):
    topic = unique("resume")
    create_topic(topic, 6)
    worker = make_worker(topic).start()
    first, expected = bulk_records(20_000, 6, seed=21)
    worker.wait_caught_up(produce(topic, first))
    assert counts_of(worker) == expected
    generation = worker.health()["rst_id"]
    assert generation > 0

    # a clean stop, more messages while it is down, a restart
    second, more = bulk_records(5_000, 6, seed=22)
    worker.stop()
    last = produce(topic, second)
    log = restart(worker, signal.SIGTERM)
    lines = snapshot_lines(log)
    assert len(lines) == 1 and RESUMED.search(lines[0]), log
    resumed = RESUMED.search(lines[0])
    assert resumed is not None
    assert int(resumed[1]) == generation
    assert int(resumed[2]) == len(expected)
    offsets = ast.literal_eval(resumed[3])
    assert set(offsets) == set(range(6)) and sum(offsets.values()) > 0
    worker.wait_caught_up(last)
    expected = combined(expected, more)
    assert counts_of(worker) == expected
    generation_after_stop = worker.health()["rst_id"]
    assert generation_after_stop > generation

    # SIGKILL while messages arrive (refreshes under way), more while it is down, a restart
    third, during = bulk_records(12_000, 6, seed=23)
    producer = BackgroundProducer(topic, third, chunk=1_000, pause_s=0.1).start()
    while producer.running and not producer.last:
        producer.thread.join(0.1)
    producer.thread.join(1.0)
    worker.stop(signal.SIGKILL)
    producer.join()
    fourth, after = bulk_records(3_000, 6, seed=24)
    last = produce(topic, fourth)
    log = restart(worker, signal.SIGKILL)
    lines = snapshot_lines(log)
    assert len(lines) == 1 and RESUMED.search(lines[0]), log
    resumed = RESUMED.search(lines[0])
    assert resumed is not None and int(resumed[1]) >= generation_after_stop
    status = worker.wait_caught_up(last)
    expected = combined(expected, during, after)
    assert sum(expected.values()) == 40_000
    assert counts_of(worker) == expected
    assert status["rst_id"] > int(resumed[1])


def test_changed_settings_rebuild_the_snapshot_with_the_new_meaning(make_worker):
    topic = unique("rebuild")
    create_topic(topic, 6)
    worker = make_worker(topic).start()
    records, expected = bulk_records(6_000, 6, seed=31)
    last = produce(topic, records)
    worker.wait_caught_up(last)
    assert counts_of(worker) == expected == rebucketed(records, 20)
    generation = worker.health()["rst_id"]

    # another bucket_interval: another state, counted afresh; the snapshot rebuilt at 60 s
    log = restart(worker, signal.SIGKILL, extra={"bucket_interval": "60"})
    lines = snapshot_lines(log)
    assert len(lines) == 1 and REBUILT in lines[0], log
    assert "other settings" in lines[0] and "state" in lines[0] and "interval_s" in lines[0]
    worker.wait_caught_up(last)
    rows = worker.get("/a/default").json()
    assert all(row["bucket_end"] - row["bucket_start"] == 60 for row in rows)
    assert counts_of(worker) == rebucketed(records, 60)
    assert worker.health()["rst_id"] > generation  # a rebuild never reuses an RST_ID

    # grace changes no stored count but the final flags: the same state, the snapshot rebuilt
    log = restart(worker, signal.SIGTERM, extra={"bucket_interval": "60", "grace": "120"})
    lines = snapshot_lines(log)
    assert len(lines) == 1 and REBUILT in lines[0] and "grace_s" in lines[0], log
    assert "did not stop cleanly" not in log
    worker.wait_caught_up(last)
    assert counts_of(worker) == rebucketed(records, 60)

    # and the same settings again: resumed
    log = restart(worker, signal.SIGTERM)
    lines = snapshot_lines(log)
    assert len(lines) == 1 and RESUMED.search(lines[0]), log
    worker.wait_caught_up(last)
    assert counts_of(worker) == rebucketed(records, 60)
