"""The Python limit: an aiokafka consumer that decodes each record and counts in a dict.

The leanest correct loop for each payload shape (``bare.py [SHAPE]``, default ``flat``; see
``shapes.py``): per record only the decode (orjson, or fastavro's ``schemaless_reader`` past
the Confluent header; for avro-registry the writer schema of the frame's id, fetched from the
registry once and resolved against the reader, as bucket_app does), the fields, the time
(``fromisoformat`` for ISO) and one dict increment; bad1 catches what it cannot count.
Progress (messages, the end offsets reached, the clock) is recorded once per fetched batch.
Each shape has its own loop: a branch per record would cost every shape what one needs.
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
import urllib.request
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from fastavro import parse_schema, schemaless_reader

sys.path.insert(0, str(Path(__file__).parent))
from child import Progress, config  # noqa: E402
from shapes import AVRO_SCHEMA, CONFLUENT_HEADER, REGISTRY_V2  # noqa: E402

BUCKET_S = 60
Counts = dict[tuple[str, str, int], int]
Loop = Callable[[Sequence[Any]], None]


def flat(counts: Counts) -> Loop:
    def count(records: Sequence[Any], loads: Any = orjson.loads, get: Any = counts.get) -> None:
        for record in records:
            msg = loads(record.value)
            ts = int(msg["timestamp"])
            key = (msg["origin_server"], msg["topic"], ts - ts % BUCKET_S)
            counts[key] = get(key, 0) + 1
    return count


def nested(counts: Counts) -> Loop:
    def count(records: Sequence[Any], loads: Any = orjson.loads, get: Any = counts.get) -> None:
        for record in records:
            msg = loads(record.value)
            ts = int(msg["timestamp"])
            key = (msg["origin_server"], msg["meta"]["host"], ts - ts % BUCKET_S)
            counts[key] = get(key, 0) + 1
    return count


def iso(counts: Counts) -> Loop:
    def count(records: Sequence[Any], loads: Any = orjson.loads, get: Any = counts.get,
              parse: Any = datetime.fromisoformat) -> None:
        for record in records:
            msg = loads(record.value)
            ts = int(parse(msg["timestamp"]).timestamp())  # every time has its zone
            key = (msg["origin_server"], msg["topic"], ts - ts % BUCKET_S)
            counts[key] = get(key, 0) + 1
    return count


def avro(counts: Counts, skip: int = 0) -> Loop:
    schema = parse_schema(AVRO_SCHEMA)

    def count(records: Sequence[Any], read: Any = schemaless_reader, buffer: Any = io.BytesIO,
              get: Any = counts.get) -> None:
        for record in records:
            msg = read(buffer(record.value), schema, None)
            ts = msg["timestamp"]
            key = (msg["origin_server"], msg["topic"], ts - ts % BUCKET_S)
            counts[key] = get(key, 0) + 1

    def count_framed(records: Sequence[Any], read: Any = schemaless_reader,
                     buffer: Any = io.BytesIO, get: Any = counts.get) -> None:
        for record in records:
            data = buffer(record.value)
            data.seek(skip)  # faster than a slice of the value
            msg = read(data, schema, None)
            ts = msg["timestamp"]
            key = (msg["origin_server"], msg["topic"], ts - ts % BUCKET_S)
            counts[key] = get(key, 0) + 1
    return count_framed if skip else count


def avro_registry(counts: Counts, registry: str) -> Loop:
    """Writer schemas by the frame's id, each fetched once (``GET /schemas/ids/<id>``),
    resolved against the reader (the subject's latest, REGISTRY_V2)."""
    reader = parse_schema(REGISTRY_V2, named_schemas={})
    writers: dict[int, Any] = {}

    def writer(schema_id: int) -> Any:
        url = f"{registry}/schemas/ids/{schema_id}"
        with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - bench's own
            text = json.loads(answer.read())["schema"]
        writers[schema_id] = parse_schema(json.loads(text), named_schemas={})
        return writers[schema_id]

    def count(records: Sequence[Any], read: Any = schemaless_reader, buffer: Any = io.BytesIO,
              get: Any = counts.get, by_id: Any = writers.get) -> None:
        for record in records:
            value = record.value
            schema_id = int.from_bytes(value[1:5], "big")
            data = buffer(value)
            data.seek(5)
            msg = read(data, by_id(schema_id) or writer(schema_id), reader)
            ts = msg["timestamp"]
            key = (msg["origin_server"], msg["topic"], ts - ts % BUCKET_S)
            counts[key] = get(key, 0) + 1
    return count


def bad1(counts: Counts) -> Loop:
    """flat, skipping what bucket_app skips (not JSON, not an object, a time that is no
    number); a message without its time counts at its Kafka record time, as in bucket_app."""
    def count(records: Sequence[Any], loads: Any = orjson.loads, get: Any = counts.get) -> None:
        for record in records:
            try:
                msg = loads(record.value)
                try:
                    ts = int(msg["timestamp"])
                except KeyError:
                    ts = record.timestamp // 1000
                key = (msg["origin_server"], msg["topic"], ts - ts % BUCKET_S)
            except (ValueError, TypeError):  # orjson's JSONDecodeError is a ValueError
                continue
            counts[key] = get(key, 0) + 1
    return count


LOOPS: dict[str, Callable[[Counts], Loop]] = {
    "flat": flat, "nested": nested, "iso": iso, "avro": avro,
    "avro-confluent": lambda counts: avro(counts, skip=len(CONFLUENT_HEADER)), "bad1": bad1,
    "lz4": flat,  # aiokafka decompresses the batches before the loop sees a record
    "avro-registry": lambda counts: avro_registry(counts, sys.argv[2]),
}


async def main(shape: str) -> None:
    cfg = config()
    progress = Progress(cfg["ends"])
    consumer = AIOKafkaConsumer(bootstrap_servers=cfg["brokers"], group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest",
                                max_partition_fetch_bytes=4 * 1024 * 1024)
    await consumer.start()
    counts: Counts = {}
    count = LOOPS[shape](counts)
    try:
        tps = [TopicPartition(cfg["topic"], p) for p in cfg["ends"]]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        done = not progress.remaining
        while not done:
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            if batches:
                progress.begin()
            for tp, records in batches.items():
                if not records:
                    continue
                count(records)
                done = progress.batch(tp.partition, records[-1].offset, len(records))
    finally:
        await consumer.stop()
    progress.write(cfg["result"], keys=len(counts), shape=shape,
                   counts=[[*key, n] for key, n in counts.items()])


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "flat"))
