"""A worker counting with the native kernel (the default) counts exactly: JSON, Avro with a
schema registry, and Avro with a local schema; and so does one with ``BUCKET_APP_KERNEL=python``,
the pure-Python path end to end.

One topic holds what producers write: JSON from kcat (librdkafka) compressed with each codec,
bad messages among it, and a transactional producer's committed and aborted transactions. A
worker with each kernel counts it: its log says which kernel runs (and, native, that it read
fetches), every
row equals the count computed here, every bad message is skipped by its reason, aborted records
are not counted, and every partition is read to its end.
"""

from __future__ import annotations

import io
import json
import random
import time
from collections import Counter

import pytest
from fastavro import parse_schema, schemaless_writer

from tests.support.kafka import Record, create_topic, produce, unique
from tests.support.producers import CODECS, TransactionalProducer, kcat_produce
from tests.support.registry import REGISTRY_URL, registry_error
from tests.support.registry_records import MSG_MAP as REGISTRY_MAP
from tests.support.registry_records import PARTITIONS as REGISTRY_PARTITIONS
from tests.support.registry_records import SQLITE_SCHEMA as REGISTRY_SQLITE
from tests.support.registry_records import counted, mixed
from tests.support.settings import AVRO_SCHEMA_PATH
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


def test_a_worker_with_the_native_kernel_counts_avro_from_a_registry_exactly(make_worker):
    """Four writer versions (a field added with a default, an optional one dropped, int to
    long, a rename with an alias) read with the subject's latest, interleaved, plus an
    incompatible writer and ids the registry does not know: counted by the kernel, exact, and
    skipped by reason; the ids fetched as their records arrive (the first fetch of a new id
    waits for the registry, its records counted once it answers)."""
    exc = registry_error(REGISTRY_URL)
    if exc is not None:
        pytest.fail(f"no schema registry at {REGISTRY_URL} ({exc}); run `make schema-registry`")
    topic = unique("kernel-avro")
    create_topic(topic, REGISTRY_PARTITIONS)
    mix = mixed(topic, 4000, seed=41)
    last = produce(topic, mix.records[:2000])
    worker = make_worker(topic, partitions=REGISTRY_PARTITIONS, msg_map=dict(REGISTRY_MAP),
                         schema=dict(REGISTRY_SQLITE), env={"BUCKET_APP_KERNEL": "native"},
                         extra={"bucket_field": "ts", "schema_registry_url": REGISTRY_URL})
    worker.start()
    worker.wait_caught_up(last, timeout_s=180)
    worker.wait_caught_up(produce(topic, mix.records[2000:]), timeout_s=180)
    assert counted(worker) == dict(mix.expected)
    health = worker.health()["worker"]
    assert health["skipped"] == {"avro_mismatch": 30, "unknown_schema": 20}
    assert health["counted"] == 4000
    log = worker.log_path.read_text()
    assert "counting kernel: native" in log and "Avro values" in log
    assert "counting kernel: first fetch read natively" in log


def test_a_worker_with_the_native_kernel_counts_schemaless_avro_exactly(make_worker, tmp_path):
    """Avro with the avro_val_schema file and no registry: schemaless values and values behind
    a Confluent header (its id ignored), and values that are not the schema's."""
    schema = json.loads(AVRO_SCHEMA_PATH.read_text())
    parsed = parse_schema(schema)
    rng = random.Random(43)
    start = (int(time.time()) - 7200) // 20 * 20
    expected: Counter = Counter()
    records = []
    for i in range(3000):
        server, topic_ = f"n-{rng.randrange(4)}", rng.choice(["t0", "", "é\"😀"])
        ts = start + rng.randrange(3600)
        expected[(server, topic_, ts // 20 * 20)] += 1
        out = io.BytesIO()
        if i % 3 == 0:
            out.write(b"\x00\x00\x00\x00\x07")
        schemaless_writer(out, parsed, {"origin_server": server, "topic": topic_,
                                        "timestamp": ts, "meta": {"host": "h"}})
        records.append(Record(out.getvalue(), rng.randrange(PARTITIONS)))
    records += [Record(b"", 0), Record(b"\x02x", 1), Record(b"\x00\x00\x00\x00\x07\x02x", 0)]
    topic = unique("kernel-avro-local")
    create_topic(topic, PARTITIONS)
    worker = make_worker(topic, partitions=PARTITIONS, env={"BUCKET_APP_KERNEL": "native"},
                         extra={"avro_val_schema": str(AVRO_SCHEMA_PATH)}).start()
    worker.wait_caught_up(produce(topic, records), timeout_s=180)
    assert counts_of(worker) == expected
    assert worker.health()["worker"]["skipped"] == {"empty": 1, "avro_mismatch": 2}
    assert "Avro values" in worker.log_path.read_text()
