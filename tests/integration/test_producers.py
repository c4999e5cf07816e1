"""What real producers write: batches compressed with every codec Kafka defines.

One data set (JSON messages and a few bad ones) is produced to one topic per codec, half by kcat
(librdkafka) and half by Kafka's Java console producer, each compressing with that codec; the
broker's own dump of the log segments shows the batches stored compressed (librdkafka leaves a
batch uncompressed when compressing would not shrink it; Java's are all compressed). A worker
per topic counts it: every row equals the count computed here from the data set, every bad
message is skipped by its reason, and the worker is still running.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter

import pytest

from tests.support.kafka import create_topic, unique
from tests.support.producers import CODECS, batches_of, java_produce, kcat_produce
from tests.support.worker import counts_of

pytestmark = pytest.mark.integration

PARTITIONS = 2
GOOD = 3000
# bad messages, each with the reason the worker must skip it for
BAD = [(b"not json at all", "not_json"), (b"[1, 2, 3]", "not_object"),
       (b'{"origin_server": "x", "topic": "t", "timestamp": 4102444800}', "future_time"),
       (b'{"origin_server": "x", "topic": "t", "timestamp": "soon"}', "bad_time")]


def data_set(seed: int) -> tuple[list[bytes], Counter, Counter]:
    """Message lines (good and bad, shuffled), the counts they make and the skips by reason."""
    rng = random.Random(seed)
    start = (int(time.time()) - 7200) // 20 * 20
    lines, expected, skipped = [], Counter(), Counter()
    for i in range(GOOD):
        server, topic = f"c-{rng.randrange(5)}", f"t{rng.randrange(3)}"
        ts = start + rng.randrange(3600)
        lines.append(json.dumps({"origin_server": server, "topic": topic, "timestamp": ts,
                                 "i": i}).encode())
        expected[(server, topic, ts - ts % 20)] += 1
    for n in range(60):
        value, reason = BAD[n % len(BAD)]
        lines.append(value)
        skipped[reason] += 1
    rng.shuffle(lines)
    return lines, expected, skipped


@pytest.mark.parametrize("codec", CODECS)
def test_each_codec_is_counted_exactly(codec, make_worker):
    lines, expected, skipped = data_set(seed=CODECS.index(codec))
    topic = unique(f"codec-{codec}")
    create_topic(topic, PARTITIONS)
    half = len(lines) // 2
    kcat_produce(topic, lines[:half], codec)
    java_produce(topic, lines[half:], codec)

    batches = [b for p in range(PARTITIONS) for b in batches_of(topic, p)]
    assert sum(b["count"] for b in batches) == len(lines)  # each message written once
    # librdkafka sends a batch uncompressed when compressing does not make it smaller (a small
    # batch: zstd's frame costs more than it saves); Kafka's Java producer always compresses
    assert {b["codec"] for b in batches} <= {codec, "none"}, batches
    compressed = sum(b["count"] for b in batches if b["codec"] == codec)
    assert compressed >= len(lines) - half, batches

    worker = make_worker(topic, partitions=PARTITIONS).start()
    health = worker.wait_read_to_end(topic, PARTITIONS)
    assert counts_of(worker) == expected
    assert health["worker"]["skipped"] == dict(skipped)
