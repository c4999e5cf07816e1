"""Transactions, as exactly-once producers write them, read with isolation_level read_committed.

A transactional producer commits, aborts and leaves a transaction open while a worker runs:
only committed records are counted, an aborted transaction's never, an open one's once it
commits; while it is open, /health and /metrics show its records as lag, exactly. The same
holds when the worker is SIGKILLed between the abort and the next commit. The independent count
is the records of the committed transactions, made here.
"""

from __future__ import annotations

import json
import random
import re
import signal
import time
from collections import Counter

import pytest

from tests.support.http import http
from tests.support.kafka import create_topic, unique
from tests.support.producers import TransactionalProducer, batches_of
from tests.support.worker import NotLoaded, Worker, counts_of

pytestmark = pytest.mark.integration

PARTITIONS = 2


class Transactions:
    """Records for transactions (each its own servers, so an aborted one's rows would show)
    and the counts of those committed."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.producer = TransactionalProducer(unique("tx"))
        self.rng = random.Random(topic)
        self.start = (int(time.time()) - 3600) // 20 * 20
        self.committed: Counter = Counter()
        self.open: tuple[Counter, Counter] | None = None  # counts, records by partition
        self.n = 0

    def _records(self, label: str, n: int) -> tuple[list[tuple[int, bytes]], Counter, Counter]:
        records, counts, per_partition = [], Counter(), Counter()
        for _ in range(n):
            server, ts = f"{label}-{self.rng.randrange(4)}", self.start + self.rng.randrange(900)
            partition = self.rng.randrange(PARTITIONS)
            records.append((partition, json.dumps({
                "origin_server": server, "topic": "t", "timestamp": ts, "i": self.n}).encode()))
            self.n += 1
            counts[(server, "t", ts - ts % 20)] += 1
            per_partition[partition] += 1
        return records, counts, per_partition

    def commit(self, label: str, n: int) -> None:
        records, counts, _ = self._records(label, n)
        self.producer.begin()
        self.producer.send(self.topic, records)
        self.producer.commit()
        self.committed += counts

    def abort(self, label: str, n: int) -> Counter:
        """Send ``n`` records in a transaction and abort it; return what they would count."""
        records, counts, _ = self._records(label, n)
        self.producer.begin()
        self.producer.send(self.topic, records)
        self.producer.abort()
        return counts

    def leave_open(self, label: str, n: int) -> Counter:
        """Send ``n`` records in a transaction left open; return them by partition."""
        records, counts, per_partition = self._records(label, n)
        self.producer.begin()
        self.producer.send(self.topic, records)
        self.open = (counts, per_partition)
        return per_partition

    def commit_open(self) -> None:
        assert self.open is not None
        self.producer.commit()
        self.committed += self.open[0]
        self.open = None

    def abort_open(self) -> None:
        assert self.open is not None
        self.producer.abort()
        self.open = None


@pytest.fixture
def transactions():
    topic = unique("transactions")
    create_topic(topic, PARTITIONS)
    found = Transactions(topic)
    yield found
    found.producer.close()


def wait_counts(worker: Worker, expected: Counter, timeout_s: float = 60) -> None:
    """Wait until the worker's counts are ``expected`` (a restarted worker answers 503 until
    its snapshot is loaded)."""
    deadline = time.monotonic() + timeout_s
    found = None
    while found != expected and time.monotonic() < deadline:
        try:
            found = counts_of(worker)
        except NotLoaded:
            found = None
        time.sleep(0.3)
    assert counts_of(worker) == expected


def wait_lag(worker: Worker, lag: dict[int, int], timeout_s: float = 30) -> dict:
    """/health once its lag per partition is ``lag``."""
    deadline = time.monotonic() + timeout_s
    status = worker.health()
    while time.monotonic() < deadline:
        status = worker.health()
        if {int(p): s["lag"] for p, s in status["partitions"].items()} == lag:
            return status
        time.sleep(0.2)
    raise AssertionError(f"lag not {lag}: {status}")


def metrics_lag(worker: Worker) -> dict[int, int]:
    text = http(worker.url + "/metrics").body.decode()
    return {int(p): int(float(v)) for p, v in re.findall(
        r'^bucket_app_consumer_lag\{partition="(\d+)"\} (\S+)$', text, re.MULTILINE)}


def wait_metrics_lag(worker: Worker, lag: dict[int, int], timeout_s: float = 10) -> None:
    """/metrics' consumer lag once it is ``lag`` (sampled every second)."""
    deadline = time.monotonic() + timeout_s
    while metrics_lag(worker) != lag and time.monotonic() < deadline:
        time.sleep(0.3)
    assert metrics_lag(worker) == lag


def test_only_committed_transactions_are_counted(transactions, make_worker):
    topic = transactions.topic
    worker = make_worker(topic, partitions=PARTITIONS).start()
    transactions.commit("first", 1000)
    transactions.abort("aborted", 500)
    open_records = transactions.leave_open("open", 1000)

    wait_counts(worker, transactions.committed)
    # the open transaction's records are in the topic, waiting: lag, exactly them
    wait_lag(worker, dict(open_records))
    wait_metrics_lag(worker, dict(open_records))
    assert not worker.health()["complete"]

    transactions.commit_open()
    wait_counts(worker, transactions.committed)
    status = worker.wait_read_to_end(topic, PARTITIONS)
    assert not any(server.startswith("aborted") for server, _, _ in counts_of(worker))
    assert sum(transactions.committed.values()) == 2000 == status["worker"]["counted"]
    assert status["worker"]["skipped"] == {}  # aborted records are not bad input either
    wait_metrics_lag(worker, {p: 0 for p in range(PARTITIONS)})
    # the broker holds what the test says: two committed, one aborted transaction's batches
    markers = [b for p in range(PARTITIONS) for b in batches_of(topic, p) if b["control"]]
    assert len(markers) == 3 * PARTITIONS


def test_a_worker_killed_between_abort_and_commit_counts_exactly(transactions, make_worker):
    topic = transactions.topic
    worker = make_worker(topic, partitions=PARTITIONS).start()
    transactions.commit("first", 800)
    transactions.abort("aborted", 400)
    worker.wait_read_to_end(topic, PARTITIONS)  # the worker has read past the abort
    assert counts_of(worker) == transactions.committed
    worker.stop(signal.SIGKILL)

    open_records = transactions.leave_open("open", 600)
    worker.start()
    wait_counts(worker, transactions.committed)
    wait_lag(worker, dict(open_records))
    transactions.abort_open()  # the transaction open through the restart is aborted
    transactions.commit("second", 500)
    wait_counts(worker, transactions.committed)
    worker.wait_read_to_end(topic, PARTITIONS)
    assert not any(server.startswith(("aborted", "open")) for server, _, _
                   in counts_of(worker))


def test_read_uncommitted_counts_every_record_as_written(transactions, make_worker):
    """For topics without transactions: the setting is honoured, aborted records included."""
    topic = transactions.topic
    worker = make_worker(topic, partitions=PARTITIONS,
                         extra={"isolation_level": "read_uncommitted"}).start()
    transactions.commit("first", 300)
    aborted = transactions.abort("aborted", 200)
    worker.wait_read_to_end(topic, PARTITIONS)
    assert counts_of(worker) == transactions.committed + aborted
