"""Broker failures: a restarted broker, and a three-broker cluster with one broker stopped.

Each test starts its own Kafka (the project's scripts, jars from Maven Central) on its own
ports, so stopping brokers never disturbs the shared test broker.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.support.cluster import CLUSTER, script, start_replicas
from tests.support.kafka import (
    BackgroundProducer,
    bulk_records,
    create_topic,
    produce,
    topic_counts,
    unique,
)
from tests.support.worker import counts_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OWN_PORT = 9392


@pytest.fixture
def own_broker() -> Iterator[str]:
    script("kafka.sh", "clean", port=OWN_PORT)
    script("kafka.sh", "start", port=OWN_PORT)
    yield f"127.0.0.1:{OWN_PORT}"
    script("kafka.sh", "clean", port=OWN_PORT)


@pytest.fixture
def cluster() -> Iterator[str]:
    script("kafka-cluster.sh", "clean")
    script("kafka-cluster.sh", "start")
    yield CLUSTER
    script("kafka-cluster.sh", "clean")


def test_broker_restart_mid_stream_loses_nothing(own_broker, make_worker):
    topic = unique("brk")
    create_topic(topic, 4, brokers=own_broker)
    worker = make_worker(topic, partitions=4, brokers=own_broker).start()
    first, expected = bulk_records(10_000, 4, seed=11)
    produce(topic, first, brokers=own_broker)
    # the worker is still working through the backlog when its only broker goes away
    script("kafka.sh", "stop", port=OWN_PORT)
    time.sleep(3)
    assert worker.get("/health").status == 200  # the HTTP side keeps answering
    script("kafka.sh", "start", port=OWN_PORT)
    second, more = bulk_records(2_000, 4, seed=12, prefix="after")
    last = produce(topic, second, brokers=own_broker)
    worker.wait_caught_up(last, timeout_s=240)
    assert counts_of(worker) == expected | more


def test_three_brokers_one_stopped_counts_stay_exact(cluster, make_worker):
    topic = unique("rf3")
    create_topic(topic, 6, replication=3, brokers=cluster)
    # healthy, and their snapshots loaded: a 503 below would be the outage's
    workers = start_replicas(make_worker, topic)
    records, expected = bulk_records(16_000, 6, seed=13)
    producer = BackgroundProducer(topic, records, chunk=500, pause_s=0.3, brokers=cluster).start()
    time.sleep(4)
    script("kafka-cluster.sh", "stop-node", "2")
    during = [w.get("/a/default") for w in workers]
    assert [a.status for a in during] == [200, 200]
    last = producer.join()
    assert topic_counts(topic, 6, brokers=cluster) == expected
    for worker in workers:
        worker.wait_caught_up(last, timeout_s=240)
        assert counts_of(worker) == expected
    script("kafka-cluster.sh", "start-node", "2")
    for worker in workers:
        assert worker.get("/health").status == 200


LATE_PORT = 9492


def test_worker_started_before_its_broker_waits_then_counts(make_worker):
    """A worker whose broker is down waits (503 starting on /health, a line every few
    seconds naming the broker) and counts exactly once the broker appears."""
    script("kafka.sh", "clean", port=LATE_PORT)
    broker = f"127.0.0.1:{LATE_PORT}"
    topic = unique("late")
    worker = make_worker(topic, partitions=2, brokers=broker).start(wait=False)
    try:
        deadline = time.monotonic() + 30
        answer = None
        while time.monotonic() < deadline:
            try:
                answer = worker.get("/health")
                break
            except OSError:
                time.sleep(0.3)
        assert answer is not None and answer.status == 503, worker.tail()
        body = answer.json()
        assert body["status"] == "starting" and broker in body["reason"], body
        assert answer.headers["Retry-After"]
        refused = worker.get("/a/default")
        assert refused.status == 503 and refused.json()["status"] == 503
        time.sleep(7)  # longer than one "waiting" line's interval
        assert worker.proc is not None and worker.proc.poll() is None, worker.tail()
        assert worker.tail().count(f"waiting for Kafka at {broker}") >= 2, worker.tail()

        script("kafka.sh", "start", port=LATE_PORT)
        worker.wait_healthy(timeout_s=120)
        records, expected = bulk_records(3_000, 2, seed=21)
        last = produce(topic, records, brokers=broker)
        worker.wait_caught_up(last, timeout_s=120)
        assert counts_of(worker) == expected
    finally:
        worker.stop()
        script("kafka.sh", "clean", port=LATE_PORT)


def test_worker_gives_up_after_startup_timeout(make_worker):
    """With startup_timeout set, a worker whose brokers never appear exits with status 2 and
    one line naming the brokers and the timeout."""
    broker = f"127.0.0.1:{LATE_PORT + 7}"  # nothing listens there
    worker = make_worker(unique("never"), brokers=broker,
                         extra={"startup_timeout": "4s"}).start(wait=False)
    assert worker.proc is not None
    started = time.monotonic()
    assert worker.proc.wait(60) == 2, worker.tail()
    assert 4 <= time.monotonic() - started < 40
    last = worker.tail().strip().splitlines()[-1]
    assert last.startswith(f"bucket_app: cannot reach Kafka at {broker}"), last
    assert "startup_timeout = 4 s" in last, last


def test_a_broker_outage_logs_a_line_per_30_s_and_sigterm_still_exits_in_10_s(
        own_broker, make_worker):
    """While its broker is gone a worker says so once, then once every 30 s per kind of error
    (with how many it held back), /health and /metrics name the broker; SIGTERM exits within
    10 s with the broker up and with it down, and the restart counts exactly."""
    topic = unique("gone")
    create_topic(topic, 2, brokers=own_broker)
    worker = make_worker(topic, partitions=2, brokers=own_broker).start()
    records, expected = bulk_records(3_000, 2, seed=31)
    worker.wait_caught_up(produce(topic, records, brokers=own_broker))
    up_s = worker.stop_timed(90)
    assert up_s < 10, up_s
    worker.start()

    script("kafka.sh", "stop", port=OWN_PORT)
    before = worker.log_path.read_text(errors="replace").count("\n")
    time.sleep(35)
    health = worker.health()
    assert health["status"] == "degraded", health
    assert "brokers unreachable: node 1 for" in health["reason"], health
    scraped = worker.get("/metrics").body.decode()
    assert 'bucket_app_broker_unreachable_seconds{broker="1"}' in scraped
    down_s = worker.stop_timed(90)
    lines = worker.log_path.read_text(errors="replace").splitlines()[before:]
    shutdown = next(i for i, line in enumerate(lines) if "Signal received" in line)
    errors = [line for line in lines[:shutdown] if "[ERROR]" in line]
    held = [line for line in errors if "more like it in the last 30 s" in line]
    # a few kinds (connect, metadata, fetch, coordinator), each at the start and at 30 s
    assert 2 <= len(errors) <= 12 and held, "\n".join(errors)
    assert down_s < 10, down_s

    script("kafka.sh", "start", port=OWN_PORT)
    worker.start()
    more, added = bulk_records(1_000, 2, seed=32, prefix="after")
    worker.wait_caught_up(produce(topic, more, brokers=own_broker), timeout_s=120)
    assert counts_of(worker) == expected | added
    print(f"SIGTERM exit: {up_s:.1f} s with the broker up, {down_s:.1f} s with it down; "
          f"{len(errors)} ERROR lines in 35 s of outage")
