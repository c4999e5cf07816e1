"""Retention on the real broker: expired buckets leave the table, the changelog and the snapshot,
late events for them are refused as bad input, and a restart does not bring them back."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.kafka import Record, create_topic, produce, unique

pytestmark = pytest.mark.integration


def event(server: str, ts: int) -> bytes:
    return json.dumps({"origin_server": server, "topic": "r", "timestamp": ts}).encode()


def counts(worker) -> dict[tuple[str, int], int]:
    return {(r["server_name"], r["bucket_start"]): r["count"]
            for r in worker.get("/a/default").json()}


def test_expired_buckets_are_tombstoned_and_stay_gone(make_worker):
    topic = unique("ret")
    create_topic(topic, 2)
    worker = make_worker(topic, partitions=2,
                         extra={"clean_interval": "60s", "clean_freq": "1s"}).start()
    base = (int(time.time()) - 3600) // 20 * 20

    last = produce(topic, [Record(event("old", base + 1), p) for p in (0, 1) for _ in range(3)])
    worker.wait_caught_up(last)
    assert counts(worker) == {("old", base): 6}

    # Event time moves 200 s on in both partitions: bucket `base` ends 180 s behind the
    # watermark, past the 60 s retention. The sweep runs on the first event after clean_freq.
    produce(topic, [Record(event("new", base + 200), p) for p in (0, 1)])
    time.sleep(1.2)
    last = produce(topic, [Record(event("new", base + 201), p) for p in (0, 1)])
    worker.wait_caught_up(last)
    assert counts(worker) == {("new", base + 200): 4}

    # A late event for the expired bucket is refused, not resurrected.
    last = produce(topic, [Record(event("old", base + 2), 0)])
    status = worker.wait_caught_up(last)
    assert status["worker"]["skipped"].get("expired") == 1
    assert counts(worker) == {("new", base + 200): 4}

    # After a restart the table recovers from its changelog and the snapshot is rebuilt from
    # it: the tombstones keep the expired bucket gone.
    worker.stop()
    worker.start()
    worker.wait_caught_up(last)
    assert counts(worker) == {("new", base + 200): 4}
    last = produce(topic, [Record(event("old", base + 3), 1), Record(event("new", base + 205), 1)])
    status = worker.wait_caught_up(last)
    assert status["worker"]["skipped"].get("expired") == 1
    assert counts(worker) == {("new", base + 200): 5}
