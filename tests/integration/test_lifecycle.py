"""Bucket lifecycle on the real broker: final buckets, late events, idle partitions, and the
dead-letter topic.

What is final and what is late is computed here from the event times the test chose, not from
bucket_app's code: a bucket [start, start + 20) is final once every partition has counted an
event at or after start + 20 + grace.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any

import pytest

from tests.support.kafka import Record, create_topic, produce, read_records, unique

pytestmark = pytest.mark.integration

INTERVAL = 20
GRACE = 10


def event(server: str, ts: float, partition: int) -> Record:
    body = {"origin_server": server, "topic": "t", "timestamp": ts}
    return Record(json.dumps(body).encode(), partition)


def rows(worker: Any) -> dict[tuple[str, int], dict[str, Any]]:
    answer = worker.get("/api/v1/buckets?limit=1000")
    assert answer.status == 200, answer.body
    found = {}
    for row in answer.json()["rows"]:
        found[(row["server_name"], row["bucket_start"])] = row
    return found


def wait_for(check: Any, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = check()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.3)


def test_buckets_become_final_and_late_events_are_counted_as_late(make_worker):
    topic = unique("life")
    create_topic(topic, 2)
    worker = make_worker(topic, partitions=2, extra={"grace": f"{GRACE}s"}).start()
    base = (int(time.time()) // INTERVAL - 100) * INTERVAL  # a bucket start 2000 s ago
    # Partition 0 reaches base + 100, partition 1 only base + 35: the closing time is base + 35,
    # so [base, base + 20) is final (20 + 10 <= 35) and [base + 20, base + 40) is not.
    early = [event("a", base + 1, 0), event("a", base + 2, 1), event("b", base + 21, 0),
             event("b", base + 35, 1), event("c", base + 100, 0)]
    worker.wait_caught_up(produce(topic, early))
    found = wait_for(lambda: (r := rows(worker)) and r[("a", base)]["final"] == 1 and r)
    assert found[("a", base)]["final"] == 1 and found[("a", base)]["count"] == 2
    assert found[("b", base + 20)]["final"] == 0
    assert found[("c", base + 100)]["final"] == 0
    assert all(row["late"] == 0 for row in found.values())
    assert worker.health()["closing_time"] == base + 35
    final_only = worker.get("/api/v1/buckets?final=true").json()["rows"]
    assert {(r["server_name"], r["bucket_start"]) for r in final_only} == {
        key for key, row in found.items() if row["final"] == 1} == {("a", base)}
    open_only = worker.get("/api/v1/buckets?final=false").json()["rows"]
    assert len(open_only) + len(final_only) == len(found)
    refused = worker.get("/api/v1/buckets?final=maybe")
    assert refused.status == 400 and "true or false" in refused.json()["error"]

    # Late: three more for the final bucket (one a new group in it), one for the open one.
    late = [event("a", base + 5, 0), event("a", base + 6, 1), event("d", base + 7, 0),
            event("b", base + 22, 0)]
    worker.wait_caught_up(produce(topic, late))
    found = rows(worker)
    assert (found[("a", base)]["count"], found[("a", base)]["late"]) == (4, 2)
    assert (found[("d", base)]["count"], found[("d", base)]["late"], found[("d", base)]["final"]) \
        == (1, 1, 1)  # inserted final: its bucket already was
    assert (found[("b", base + 20)]["count"], found[("b", base + 20)]["late"]) == (3, 0)
    assert worker.health()["worker"]["late"] == 3

    # Partition 1 moves on: [base + 20, base + 40) becomes final, and stays final.
    worker.wait_caught_up(produce(topic, [event("e", base + 200, 1)]))
    found = wait_for(lambda: (r := rows(worker))[("b", base + 20)]["final"] == 1 and r)
    assert found and found[("b", base + 20)]["late"] == 0
    # partition 0 is at base + 100 now: [base + 100, base + 120) ends at 120, + 10 > 100
    assert found[("c", base + 100)]["final"] == 0
    assert worker.health()["closing_time"] == base + 100


@pytest.mark.parametrize("idle_close", ["off", "8s", None])  # None: the default, auto
def test_an_idle_partition_holds_buckets_open_only_without_idle_close(make_worker, idle_close):
    topic = unique("idle")
    create_topic(topic, 2)
    extra = {"grace": f"{GRACE}s"} | ({} if idle_close is None else {"idle_close": idle_close})
    worker = make_worker(topic, partitions=2, extra=extra).start()
    base = (int(time.time()) // INTERVAL - 100) * INTERVAL
    # Only partition 0 gets events; partition 1 never counts anything.
    worker.wait_caught_up(produce(topic, [event("a", base + 1, 0), event("a", base + 90, 0)]))
    found = wait_for(lambda: (r := rows(worker))[("a", base)]["final"] == 1 and r, timeout_s=3)
    if idle_close == "off":
        assert not found, "partition 1 has counted nothing: nothing can be final"
    else:
        # partition 1 is idle: the closing time is partition 0's watermark, base + 90
        assert found[("a", base)]["final"] == 1
        assert found[("a", base + 80)]["final"] == 0  # ends at 100, + 10 > 90
    if idle_close is None:
        return  # auto is three bucket intervals (60 s here); "8s" shows what follows
    # Once partition 0 is idle too, with idle_close the wall clock closes everything.
    found = wait_for(lambda: (r := rows(worker))[("a", base + 80)]["final"] == 1 and r,
                     timeout_s=12)
    assert bool(found) == (idle_close != "off")


def test_skipped_messages_go_to_the_dead_letter_topic_with_their_reason(make_worker):
    topic, dead = unique("dlq-src"), unique("dlq")
    create_topic(topic, 2)
    worker = make_worker(topic, partitions=2, extra={"dead_letter_topic": dead}).start()
    now = time.time()
    bad = [Record(b"not json", 0), Record(b"[1, 2]", 1),
           Record(json.dumps({"origin_server": "x", "timestamp": now + 86400}).encode(), 0),
           Record(b'{"origin_server": "x", "timestamp": "soon"}', 1)]
    good = [event("a", now - 60, p % 2) for p in range(10)]
    # past retention (7 days behind partition 0's watermark, now - 60): skipped as expired
    old = {"origin_server": "x", "timestamp": now - 8 * 86400}
    bad.append(Record(json.dumps(old).encode(), 0))
    last = produce(topic, [*good[:5], *bad, *good[5:]])
    worker.wait_caught_up(last)
    letters = read_records(dead, 2, len(bad))
    assert len(letters) == len(bad)
    sent = {(r.partition, r.value) for r in bad}
    seen = set()
    reasons: Counter[str] = Counter()
    for letter in letters:
        headers = {k: v.decode() for k, v in letter.headers}
        assert headers["bucket_app.source_topic"] == topic
        seen.add((int(headers["bucket_app.source_partition"]), letter.value))
        reasons[headers["bucket_app.reason"]] += 1
        assert int(headers["bucket_app.source_offset"]) <= last[
            int(headers["bucket_app.source_partition"])]
    assert seen == sent
    assert reasons == worker.health()["worker"]["skipped"] == {
        "not_json": 1, "not_object": 1, "future_time": 1, "bad_time": 1, "expired": 1}
    assert worker.health()["worker"]["dead_letters"] == 5
    assert sum(r["count"] for r in rows(worker).values()) == len(good)
