"""A worker counting with the native kernel (the default) counts exactly, and so does one with
``BUCKET_APP_KERNEL=python``, the pure-Python path end to end.

One topic holds what producers write: JSON from kcat (librdkafka) compressed with each codec,
bad messages among it, and a transactional producer's committed and aborted transactions. A
worker with each kernel counts it: its log says which kernel runs (and, native, that it read
fetches), every
row equals the count computed here, every bad message is skipped by its reason, aborted records
are not counted, and every partition is read to its end.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import pytest

from tests.support.kafka import create_topic, unique
from tests.support.producers import CODECS, TransactionalProducer, kcat_produce
from tests.support.worker import counts_of

pytestmark = pytest.mark.integration

PARTITIONS = 2
BAD = [(b"not json at all", "not_json"), (b"[1, 2, 3]", "not_object"),
       (b'{"origin_server": "x", "topic": "t", "timestamp": 4102444800}', "future_time"),
       (b'{"origin_server": "x", "topic": "t", "timestamp": "soon"}', "bad_time")]


def message(rng: random.Random, start: int, i: int, expected: Counter) -> bytes:
    server, topic = f"n-{rng.randrange(4)}", rng.choice(["t0", "t1", "é\"😀"])
    ts = start + rng.randrange(3600) + rng.choice([0, 0.25])
    expected[(server, topic, int(ts // 20 * 20))] += 1
    return json.dumps({"origin_server": server, "topic": topic, "timestamp": ts,
                       "i": i}).encode()


@pytest.mark.parametrize("kernel", ["native", "python"])
def test_a_worker_with_either_kernel_counts_exactly(make_worker, kernel):
    rng = random.Random(22)
    start = (int(time.time()) - 7200) // 20 * 20
    expected: Counter = Counter()
    skipped: Counter = Counter()
    topic = unique("kernel-worker")
    create_topic(topic, PARTITIONS)
    for codec in ("none", *CODECS):
        lines = [message(rng, start, i, expected) for i in range(400)]
        for value, reason in BAD:
            lines.append(value)
            skipped[reason] += 1
        rng.shuffle(lines)
        kcat_produce(topic, lines, codec)
    producer = TransactionalProducer(unique("kernel-worker-tx"))
    try:
        for round_ in range(4):
            producer.begin()
            if round_ % 2:  # aborted: counted nowhere
                values = [(p, message(rng, start, -1, Counter())) for p in (0, 1) * 20]
                producer.send(topic, values)
                producer.abort()
            else:
                values = [(p, message(rng, start, -1, expected)) for p in (0, 1) * 20]
                producer.send(topic, values)
                producer.commit()
    finally:
        producer.close()

    # native: the default, so the variable is not set
    worker = make_worker(topic, partitions=PARTITIONS,
                         env={} if kernel == "native" else {"BUCKET_APP_KERNEL": kernel}).start()
    health = worker.wait_read_to_end(topic, PARTITIONS)
    assert counts_of(worker) == expected
    assert health["worker"]["skipped"] == dict(skipped)
    log = worker.log_path.read_text()
    assert f"counting kernel: {kernel}" in log
    assert ("counting kernel: first fetch read natively" in log) == (kernel == "native")
