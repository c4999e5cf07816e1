"""With the kernel, a backlog of few window-keys is read in larger fetches, and one where every
record is a window-key of its own is not (bucket_app.kafka.fetchsize): the same bytes, counted
exactly either way, the first in at most three quarters of the second's batches (about half
once past the first and the last fetches of each partition; as many without larger fetches)."""

from __future__ import annotations

import json
import time

import pytest

from tests.support.kafka import Record, create_topic, produce, unique
from tests.support.worker import counts_of

pytestmark = pytest.mark.integration

PARTITIONS = 2
MESSAGES = 24_000  # of about 1 KB: 12 MB a partition, six small (2 MiB) fetches of each
FILLER = "x" * 960


def backlog(topic: str, server: object, start: int) -> dict[tuple, int]:
    """MESSAGES messages, ``server(i)`` their server, all in one bucket; their counts."""
    expected: dict[tuple, int] = {}
    records = []
    for i in range(MESSAGES):
        name = f"s-{server(i)}"  # type: ignore[operator]
        msg = {"origin_server": name, "topic": "t", "timestamp": start + i % 10, "i": i,
               "filler": FILLER}
        records.append(Record(json.dumps(msg).encode(), i % PARTITIONS))
        expected[(name, "t", start)] = expected.get((name, "t", start), 0) + 1
    create_topic(topic, PARTITIONS)
    produce(topic, records)
    return expected


def test_a_backlog_of_few_keys_is_read_in_fewer_larger_fetches(make_worker):
    start = (int(time.time()) - 3600) // 20 * 20
    batches = {}
    for kind, server in (("few", lambda i: i % 4), ("distinct", lambda i: i)):
        topic = unique(f"fetch-{kind}")
        expected = backlog(topic, server, start)
        worker = make_worker(topic, name=kind, partitions=PARTITIONS,
                             extra={"sql_row_limit": str(2 * MESSAGES)}).start()
        health = worker.wait_read_to_end(topic, PARTITIONS)
        assert counts_of(worker) == expected, kind
        batches[kind] = health["worker"]["batches"]
        worker.stop()
    # distinct: 24,000 window-keys in 2 MiB fetches, about a dozen batches; few: 4 window-keys,
    # 4 MiB a partition after the first fetch, 2 MiB again for the last records of each
    assert batches["distinct"] >= 10, batches
    assert batches["few"] <= 0.75 * batches["distinct"], batches
