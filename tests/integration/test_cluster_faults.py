"""Leader kills on a three-broker cluster (replication 3, min.insync.replicas 2) while two
worker replicas count under a steady produce rate.

One test SIGKILLs the broker leading every partition of the source topic, the other a broker
leading a changelog partition and no source partition. Either way both replicas keep answering
(a poller asks each every half second throughout), the killed broker is started again and
rejoins (every partition back to three in-sync replicas), and both replicas end exact against
the counts of what was produced, which are checked against the topic itself (each message
once: the producer is idempotent with acks=all, so its retries across the leader change write
nothing twice).

The module starts the cluster (``scripts/kafka-cluster.sh``, from this checkout, on its own
ports) and removes it afterwards; the shared test broker is not touched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support import cluster
from tests.support.kafka import (
    BackgroundProducer,
    bulk_records,
    list_topics,
    topic_counts,
    unique,
)
from tests.support.worker import Worker, counts_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PARTITIONS = 6
RECORDS = 30_000
CHUNK, PAUSE_S = 300, 0.3  # at most 1,000 a second: 30 s or more, through the kill
SOURCE_LEADER = 1


@pytest.fixture(scope="module")
def brokers() -> Iterator[str]:
    cluster.script("kafka-cluster.sh", "clean")
    cluster.script("kafka-cluster.sh", "start")
    try:
        yield cluster.CLUSTER
    finally:
        cluster.script("kafka-cluster.sh", "clean")


@dataclass
class Poller:
    """Asks each worker for ``/a/default`` every ``every_s`` from a thread, keeping each
    answer's status (or the error's name)."""

    workers: list[Worker]
    every_s: float = 0.5
    answers: list[list[Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.answers = [[] for _ in self.workers]
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for i, worker in enumerate(self.workers):
                try:
                    self.answers[i].append(worker.get("/a/default").status)
                except OSError as exc:
                    self.answers[i].append(type(exc).__name__)
            self._stop.wait(self.every_s)

    def start(self) -> Poller:
        self._thread.start()
        return self

    def stop(self) -> list[list[Any]]:
        self._stop.set()
        self._thread.join(30)
        return self.answers


def changelog_of(workers: list[Worker]) -> str:
    """The counts table's changelog topic the replicas write (Faust creates it)."""
    prefix = workers[0].app_id + "-"
    return cluster.wait_until(  # type: ignore[no-any-return]
        lambda: next((t for t in list_topics(cluster.CLUSTER)
                      if t.startswith(prefix) and t.endswith("-counts-changelog")), None),
        60, "the changelog topic")


def acked(producer: BackgroundProducer) -> int:
    """Records the brokers have acknowledged so far (offsets start at 0 in a new topic)."""
    return sum(last + 1 for last in list(producer.last.values()))


def kill_and_rejoin(node: int, led: dict[str, list[int]], workers: list[Worker],
                    producer: BackgroundProducer) -> dict[str, Any]:
    """SIGKILL ``node`` mid-stream, wait until ``led`` (topic -> partitions it led) has other
    leaders, let it stay down a while, start it again and wait for a full ISR everywhere;
    meanwhile poll both replicas. Returns what it measured, with the records acknowledged
    at each step."""
    while producer.running and acked(producer) < RECORDS // 5:
        time.sleep(0.1)
    assert producer.running, "the producer finished before the kill"
    poller = Poller(workers).start()
    killed = cluster.kill(node)
    at = {"kill": acked(producer)}
    for topic, partitions in led.items():
        cluster.wait_led_without(topic, partitions, node)
    failover_s = time.monotonic() - killed
    at["new leaders"] = acked(producer)
    assert producer.running, "the producer finished before the new leaders took over"
    time.sleep(3)  # counting goes on with two of three replicas in sync
    cluster.script("kafka-cluster.sh", "start-node", str(node))
    down_s = time.monotonic() - killed
    at["restart"] = acked(producer)
    cluster.wait_full_isr(*led)
    rejoined_s = time.monotonic() - killed
    at["ISR 3"] = acked(producer)
    answers = poller.stop()
    # the producer went on writing to the new leaders while the broker was down
    assert at["restart"] > at["new leaders"], at
    return {"failover_s": failover_s, "down_s": down_s, "rejoined_s": rejoined_s,
            "answers": answers, "acked": at}


def assert_exact(topic: str, workers: list[Worker], producer: BackgroundProducer,
                 expected: dict[tuple, int]) -> None:
    last = producer.join()
    assert sum(end + 1 for end in last.values()) == RECORDS
    # the topic holds each message once, so `expected` is what is there to count
    assert topic_counts(topic, PARTITIONS, brokers=cluster.CLUSTER) == expected
    for worker in workers:
        worker.wait_caught_up(last, timeout_s=120)
        assert counts_of(worker) == expected
        assert worker.alive()


def assert_answered(measured: dict[str, Any]) -> None:
    for answers in measured["answers"]:
        assert answers and all(a == 200 for a in answers), answers


def report(what: str, measured: dict[str, Any]) -> None:
    polls = [len(a) for a in measured["answers"]]
    print(f"{what}: {RECORDS} records, new leaders {measured['failover_s']:.1f} s after the "
          f"kill, broker down {measured['down_s']:.1f} s, ISR 3 again at "
          f"{measured['rejoined_s']:.1f} s; records acknowledged by then {measured['acked']}; "
          f"answers 200 to {polls} polls of each replica; both exact")


@dataclass
class Stream:
    topic: str
    changelog: str
    workers: list[Worker]
    producer: BackgroundProducer
    expected: dict[tuple, int]


def stream(make_worker: Any, prefix: str, seed: int) -> Stream:
    """A source topic led by SOURCE_LEADER, two replicas counting it, and the producer
    started."""
    topic = unique(prefix)
    cluster.create_topic_led_by(topic, PARTITIONS, SOURCE_LEADER)
    workers = cluster.start_replicas(make_worker, topic)
    changelog = changelog_of(workers)
    records, expected = bulk_records(RECORDS, PARTITIONS, seed=seed)
    producer = BackgroundProducer(topic, records, chunk=CHUNK, pause_s=PAUSE_S,
                                  brokers=cluster.CLUSTER).start()
    return Stream(topic, changelog, workers, producer, expected)


def test_killing_the_leader_of_the_source_partitions_keeps_both_replicas_exact(
        brokers, make_worker):
    run = stream(make_worker, "lead-src", seed=41)
    before = cluster.describe(run.topic, run.changelog)
    assert {s.leader for s in before[run.topic].values()} == {SOURCE_LEADER}, before
    measured = kill_and_rejoin(SOURCE_LEADER, {run.topic: list(range(PARTITIONS)),
                                               run.changelog: []}, run.workers, run.producer)
    assert_answered(measured)
    assert_exact(run.topic, run.workers, run.producer, run.expected)
    report("source leader killed", measured)


def test_killing_a_changelog_leader_keeps_both_replicas_exact(brokers, make_worker):
    run = stream(make_worker, "lead-log", seed=42)
    states = cluster.describe(run.topic, run.changelog)
    # a broker that leads changelog partitions and no source partition
    victim = next(s.leader for s in states[run.changelog].values()
                  if s.leader != SOURCE_LEADER)
    assert all(s.leader == SOURCE_LEADER for s in states[run.topic].values()), states
    led = [p for p, s in states[run.changelog].items() if s.leader == victim]
    measured = kill_and_rejoin(victim, {run.changelog: led, run.topic: []}, run.workers,
                               run.producer)
    assert_answered(measured)
    assert_exact(run.topic, run.workers, run.producer, run.expected)
    report(f"changelog leader (node {victim}, partitions {led}) killed", measured)
