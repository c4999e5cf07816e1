"""The native kernel on a real broker's fetch responses: every codec, from aiokafka and from
librdkafka (kcat), and a transactional producer's committed and aborted transactions.

Each fetch is sent as aiokafka's consumer sends it (a FetchRequest with the isolation level),
and its raw record bytes and aborted transactions go to the kernel and to aiokafka's own
reading (tests/support/batches.py): the same records, the same next offset, and a count that is
record by record what ``Classifier.locate`` says.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from aiokafka import AIOKafkaClient, AIOKafkaProducer
from aiokafka.protocol.fetch import FetchRequest
from aiokafka.structs import TopicPartition
from bucket_app_kernel import unpack

from bucket_app.counting.classify import Classifier
from bucket_app.counting.kernel import MAX_BATCH_BYTES, NativeKernel
from tests.support.batches import consumer_reads, counts_as_locate
from tests.support.kafka import BROKERS, create_topic, unique
from tests.support.producers import CODECS, TransactionalProducer, kcat_produce
from tests.support.settings import make_settings

pytestmark = pytest.mark.integration

NOW = time.time()


def message(i: int, bad: bool = False) -> bytes:
    if bad and i % 7 == 3:
        return b'{"origin_server": "s", "timestamp": "soon"}'
    return json.dumps({"origin_server": f"s{i % 3}", "topic": f"t{i % 2}",
                       "timestamp": NOW - 100 + i}).encode()


async def fetches(topic: str, isolation_level: int) -> list[tuple[bytes, int, list[Any]]]:
    """Partition 0 of ``topic`` fetched from offset 0 to its end, a response at a time:
    (record bytes, fetch offset, aborted transactions)."""
    client = AIOKafkaClient(bootstrap_servers=BROKERS)
    await client.bootstrap()
    try:
        tp = TopicPartition(topic, 0)
        await client.force_metadata_update()
        node = client.cluster.leader_for_partition(tp)
        out, offset = [], 0
        while True:
            request = FetchRequest(100, 1, 1 << 20, isolation_level,
                                   [(topic, [(0, offset, 64 * 1024)])])
            response = await client.send(node, request)
            (_, partitions), = response.topics
            (_, error, highwater, *part_data), = partitions
            assert error == 0
            # the layout aiokafka's fetcher reads: v11 adds a field after the aborted list
            data = part_data[-1]
            aborted = part_data[2] if response.API_VERSION >= 11 else part_data[-2]
            if not data:
                return out
            out.append((data, offset, [tuple(each) for each in aborted or []]))
            reached = consumer_reads(data, offset, aborted=list(aborted or []),
                                     read_committed=bool(isolation_level)).next_offset
            assert reached > offset, (topic, offset)
            offset = reached
            if offset >= highwater:
                return out
    finally:
        await client.close()


def check_fetches(topic: str, tmp_path: Any, expect_records: int | None = None) -> None:
    settings = make_settings(tmp_path / "settings")
    kernel, classifier = NativeKernel(settings), Classifier(settings)
    for level in (0, 1):
        seen = 0
        responses = asyncio.run(fetches(topic, level))
        assert responses
        for data, offset, aborted in responses:
            records, next_offset, _ = unpack(data, offset, aborted=aborted,
                                             read_committed=bool(level),
                                             max_batch_bytes=MAX_BATCH_BYTES)
            read = consumer_reads(data, offset, aborted=aborted, read_committed=bool(level))
            assert [tuple(r[1:]) for r in records] == read.records
            assert next_offset == read.next_offset
            got = counts_as_locate(kernel, classifier, data, offset, 0, NOW + 1,
                                   aborted=aborted, read_committed=bool(level))
            seen += got.records
        if expect_records is not None and level == 1:
            assert seen == expect_records


@pytest.mark.parametrize("codec", ["none", *CODECS])
def test_aiokafka_and_kcat_batches_of_every_codec(codec: str, tmp_path: Any) -> None:
    topic = unique(f"kernel-{codec}")
    create_topic(topic, 1)

    async def produce() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=BROKERS, linger_ms=20,
                                    compression_type=None if codec == "none" else codec)
        await producer.start()
        try:
            await asyncio.gather(*[await producer.send(topic, message(i, bad=True), partition=0)
                                   for i in range(300)])
        finally:
            await producer.stop()

    asyncio.run(produce())
    kcat_produce(topic, [message(i) for i in range(300, 600)],
                 "none" if codec == "none" else codec, brokers=BROKERS)
    check_fetches(topic, tmp_path)


def test_committed_and_aborted_transactions(tmp_path: Any) -> None:
    topic = unique("kernel-tx")
    create_topic(topic, 1)
    producer = TransactionalProducer(unique("kernel-tx"))
    try:
        committed = 0
        for round_ in range(6):
            producer.begin()
            producer.send(topic, [(0, message(round_ * 10 + i)) for i in range(10)])
            if round_ % 3 == 1:
                producer.abort()
            else:
                producer.commit()
                committed += 10
    finally:
        producer.close()
    check_fetches(topic, tmp_path, expect_records=committed)
