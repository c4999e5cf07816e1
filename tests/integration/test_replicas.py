"""Scaled replicas on the real broker: any replica answers for all partitions, and the counts stay
exact through SIGKILLs, restarts, rebalances and scaling while messages flow.

Ground truth is computed by the test from the messages it produces.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from urllib.parse import quote

import pytest

from tests.support.http import http
from tests.support.kafka import (
    BackgroundProducer,
    bulk_records,
    create_topic,
    end_offsets,
    produce,
    unique,
)
from tests.support.worker import counts_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST_FAILOVER = {"session_timeout": "6s"}


def replicas(make_worker, topic: str, n: int, partitions: int = 6) -> list:
    app_id = unique("app")
    return [make_worker(topic, app_id=app_id, name=f"r{i}", partitions=partitions,
                        extra=dict(FAST_FAILOVER)) for i in range(n)]


def started(make_worker, name: str, n: int = 2) -> tuple[str, list]:
    """A new 6-partition topic and ``n`` replicas counting it, started together, healthy."""
    topic = unique(name)
    create_topic(topic, 6)
    workers = replicas(make_worker, topic, n)
    for worker in workers:
        worker.start(wait=False)
    for worker in workers:
        worker.wait_healthy()
    return topic, workers


def wait_all(workers, last, timeout_s=180):
    for worker in workers:
        try:
            worker.wait_caught_up(last, timeout_s=timeout_s)
        except AssertionError as exc:
            others = "\n".join(f"{w.directory.name}: {w.health()}" for w in workers)
            raise AssertionError(f"{exc}\nall replicas:\n{others}") from None


def test_two_replicas_each_answer_exactly_for_all_partitions(make_worker):
    topic, workers = started(make_worker, "two")
    records, expected = bulk_records(12_000, 6, seed=1)
    last = produce(topic, records)
    wait_all(workers, last)
    for worker in workers:
        assert counts_of(worker) == expected
        status = worker.wait_complete()
        assert all(p["lag"] == 0 for p in status["partitions"].values())
    # the partitions were shared: each replica counted some, together exactly all
    counted = [w.health()["worker"]["counted"] for w in workers]
    assert all(c > 0 for c in counted), counted
    assert sum(counted) == 12_000


def test_sigkill_loop_and_kill_during_rebalance_stay_exact(make_worker):
    topic = unique("kill")
    create_topic(topic, 6)
    workers = replicas(make_worker, topic, 2)
    for worker in workers:
        worker.start()
    records, expected = bulk_records(24_000, 6, seed=2)
    producer = BackgroundProducer(topic, records, chunk=600, pause_s=0.3).start()
    rng = random.Random(3)
    kills = 0
    while producer.running and kills < 3:
        time.sleep(rng.uniform(2.0, 4.0))
        victim = rng.choice(workers)
        victim.stop(signal.SIGKILL)
        kills += 1
        time.sleep(rng.uniform(0.5, 1.5))
        victim.start(wait=False)
    assert kills == 3, "the stream ended before three kills; produce more"
    # a kill during a rebalance: the restart above triggers one; kill the other replica in it
    workers[0].wait_healthy()
    workers[1].stop(signal.SIGKILL)
    workers[0].stop(signal.SIGKILL)
    workers[0].start(wait=False)
    workers[1].start(wait=False)
    last = producer.join()
    wait_all(workers, last, timeout_s=240)
    for worker in workers:
        assert counts_of(worker) == expected
    assert sum(expected.values()) == 24_000
    # the kills were unclean: restarted replicas rebuilt their tables from the changelog
    logs = "".join(w.log_path.read_text(errors="replace") for w in workers)
    assert "did not stop cleanly" in logs


def test_scale_one_to_three_to_one_during_a_stream_is_exact(make_worker):
    topic = unique("scale")
    create_topic(topic, 6)
    first, second, third = replicas(make_worker, topic, 3)
    first.start()
    records, expected = bulk_records(20_000, 6, seed=4)
    producer = BackgroundProducer(topic, records, chunk=500, pause_s=0.25).start()
    time.sleep(3)
    second.start(wait=False)
    third.start(wait=False)
    second.wait_healthy()
    third.wait_healthy()
    time.sleep(4)
    second.stop()
    third.stop()
    last = producer.join()
    first.wait_caught_up(last, timeout_s=240)
    assert counts_of(first) == expected


def test_min_offsets_waits_or_answers_503_never_stale(make_worker):
    topic = unique("fresh")
    create_topic(topic, 2)
    (worker,) = replicas(make_worker, topic, 1, partitions=2)
    worker.start()
    records, expected = bulk_records(200, 2, seed=5)
    last = produce(topic, records)
    worker.wait_caught_up(last)
    answer = worker.get("/api/v1/buckets")
    token = answer.json()["token"]
    assert answer.headers["X-Position-Token"] == token

    # a position nobody has produced yet: 503 with Retry-After, not a partial 200
    future = ",".join(f"{p}:{o + 1000}" for p, o in last.items())
    for path in (f"/api/v1/buckets?min_offsets={future}&wait_ms=300",
                 f"/api/v1/sql?q={quote('SELECT 1')}&min_offsets={future}&wait_ms=300",
                 f"/a/default?min_offsets={future}&wait_ms=300"):
        refused = worker.get(path)
        assert refused.status == 503, path
        assert refused.headers["Retry-After"] == "1"
        assert "requested offsets" in refused.json()["error"]
    refused = http(worker.url + "/c/" + quote("SELECT * FROM default"),
                   headers={"X-Min-Offsets": future, "X-Wait-Ms": "300"})
    assert refused.status == 503

    # a token from an earlier answer is satisfied at once
    again = worker.get(f"/api/v1/buckets?min_offsets={token}&wait_ms=0")
    assert again.status == 200
    assert {(r["server_name"], r["topic"], r["bucket_start"]): r["count"]
            for r in again.json()["rows"]} == expected

    # read-your-writes: produce, then ask for exactly what was produced; it waits for it
    more, more_expected = bulk_records(50, 2, seed=6, prefix="late")
    produced = produce(topic, more)
    wanted = ",".join(f"{p}:{o}" for p, o in produced.items())
    fresh = worker.get(f"/api/v1/buckets?server_name=late-0&min_offsets={wanted}&wait_ms=20000")
    assert fresh.status == 200
    got = {(r["server_name"], r["topic"], r["bucket_start"]): r["count"]
           for r in fresh.json()["rows"]}
    assert got == {k: v for k, v in more_expected.items() if k[0] == "late-0"}
    assert end_offsets(topic, 2) == {p: o + 1 for p, o in produced.items()}
    bad = worker.get("/api/v1/buckets?min_offsets=7:1")
    assert bad.status == 400


class AskEither:
    """A client that asks one replica every ``every_s`` (``/a/default``) and tries the other
    on a 503 or a refused connection, as a load balancer in front of both would; it records
    when each question got an answer (a 200 from either)."""

    def __init__(self, workers: list, every_s: float = 0.25) -> None:
        self.workers = workers
        self.every_s = every_s
        self.answered: list[float] = []
        self.refused = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="ask-either")

    def _run(self) -> None:
        turn = 0
        while not self._stop.is_set():
            asked = time.monotonic()
            for worker in (self.workers[turn % 2], self.workers[(turn + 1) % 2]):
                try:
                    if http(worker.url + "/a/default", timeout=2).status == 200:
                        self.answered.append(asked)
                        break
                except OSError:
                    pass
                self.refused += 1
            turn += 1
            self._stop.wait(max(self.every_s - (time.monotonic() - asked), 0))

    def __enter__(self) -> AskEither:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self.thread.join(10)

    def longest_silence(self) -> float:
        """The longest time between two answered questions."""
        return max((b - a for a, b in zip(self.answered, self.answered[1:], strict=False)),
                   default=float("inf"))


def test_a_rolling_restart_keeps_answers_flowing_and_counts_exact(make_worker):
    """A deploy restarts two replicas one after the other (SIGTERM, start, healthy) while a
    producer writes steadily: a client asking either replica gets an answer at least every
    second throughout, and both end exact."""
    topic, workers = started(make_worker, "roll")
    records, expected = bulk_records(30_000, 6, seed=41)
    producer = BackgroundProducer(topic, records, chunk=250, pause_s=0.2).start()
    with AskEither(workers) as client:
        time.sleep(3)
        for worker in workers:
            worker.stop()  # SIGTERM, as a deploy does
            worker.start()  # and back, healthy, before the next one goes
            time.sleep(2)
        last = producer.join()
        time.sleep(2)
    wait_all(workers, last)
    for worker in workers:
        assert counts_of(worker) == expected
    silence = client.longest_silence()
    print(f"rolling restart: {len(client.answered)} answers, longest silence {silence:.2f} s, "
          f"{client.refused} questions tried the other replica")
    assert silence <= 1.0, silence
